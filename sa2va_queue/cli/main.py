"""`sa2va-queue`: the one console command. Parses flags, builds Settings, calls the modules."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from sa2va_queue.cli import cli_model
from sa2va_queue.cli import pacs as cli_pacs
from sa2va_queue.core.exceptions import ConfigError, Sa2vaQueueError
from sa2va_queue.core.names import printable, validate_run_name
from sa2va_queue.core.settings import Settings, apply_to_process

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Segment coronary vessels in X-ray angiography through Redis, Celery and SQL.")
console = Console(stderr=False)
err = Console(stderr=True)

FORMATS = ("md", "html", "json")
CONSUMER_RESTARTS = 10  # in one worker process, before it exits for its supervisor to restart it


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        console.print(f"sa2va-queue {version('sa2va-queue')}")
        raise typer.Exit()


@app.callback()
def _globals(
    ctx: typer.Context,
    show_version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                      help="Print the version and exit"),
    data_dir: Optional[Path] = typer.Option(None, help="Working folder (SQLite, private Redis, reports) [SA2VA_DATA_DIR]"),
    broker_url: Optional[str] = typer.Option(None, help="Redis URL; unset: `run` starts a private one [SA2VA_BROKER_URL]"),
    database_url: Optional[str] = typer.Option(None, help="SQLAlchemy URL; unset: SQLite in the data dir [SA2VA_DATABASE_URL]"),
) -> None:
    ctx.obj = {"data_dir": data_dir, "broker_url": broker_url, "database_url": database_url}


def _migrated(ctx: typer.Context) -> Settings:
    """Settings with the database reachable and its schema current (report, export, calibrate)."""
    from sa2va_queue.db.session import check_database, upgrade_schema

    settings = _settings(ctx)
    check_database(settings.sqlalchemy_url)
    upgrade_schema(settings.sqlalchemy_url)
    return settings


def _settings(ctx: typer.Context, **overrides) -> Settings:
    settings = Settings.load(**(ctx.obj or {}), **overrides)
    apply_to_process(settings)  # pixel limit; owner-only files unless SA2VA_FILE_MODE=umask
    return settings


def _default_device(spec) -> str:
    """Sa2VA goes on the GPU when one is visible; the other backends run on the CPU."""
    if spec.name != "sa2va":
        return "cpu"
    from sa2va_queue.worker.backends.sa2va.backend import default_device

    return default_device(spec)


def _start_reading_weights(spec) -> None:
    """A Sa2VA folder's checkpoint hash starts now, before torch is imported: on a cold start its
    reads fill the page cache during the imports, and the loader reads those pages from memory."""
    if spec.name == "sa2va" and spec.path and spec.path != "tiny":
        from sa2va_queue.worker.backends.sa2va.weightfiles import start_folder_hash

        start_folder_hash(spec.path)


def _formats(value: str) -> list[str]:
    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ConfigError(f"--format {value!r}: choose from {','.join(FORMATS)}")
    return formats


@app.command()
def run(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Folder of frames (recursive) or one image"),
    model: str = typer.Option("vesselness", help="NAME[:PATH][?key=value&...], e.g. vesselness, sa2va:/models/ft"),
    gt: Optional[Path] = typer.Option(None, help="Ground truth: mask folder, LabelMe folder, annotations.json or COCO JSON"),
    run_name: Optional[str] = typer.Option(None, help="Name of the run (default: dataset-model-time)"),
    split: Optional[Path] = typer.Option(None, help="Only the frames listed in this split file (see `split`)"),
    prompt: Optional[str] = typer.Option(None, help="Text prompt for every job [SA2VA_PROMPT]"),
    urgent: bool = typer.Option(False, help="Send to the urgent queue"),
    max_batch_size: Optional[int] = typer.Option(None, help="[SA2VA_MAX_BATCH_SIZE] for the local worker"),
    max_queue_delay_ms: Optional[float] = typer.Option(None, help="[SA2VA_MAX_QUEUE_DELAY_MS] for the local worker"),
    timeout: float = typer.Option(3600.0, help="Give up waiting after this many seconds"),
    report_dir: Optional[Path] = typer.Option(None, help="Where reports go (default DATA_DIR/reports)"),
    format: str = typer.Option("md,html,json", "--format", help="Report formats"),
    verbose: bool = typer.Option(False, help="List every note of the input scan, not only problems"),
    device: Optional[str] = typer.Option(
        None, help="Device of the local worker: cpu, cuda or auto; default: cuda for sa2va when a GPU is visible"),
) -> None:
    """The main job: enqueue every frame, wait for the workers, print the summary, write the report."""
    from sa2va_queue.cli.runner import run_dataset

    settings = _settings(ctx, prompt=prompt, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms)
    outcome = run_dataset(settings, dataset, model=model, gt=gt, run_name=run_name, split=split, urgent=urgent,
                          timeout_s=timeout, report_dir=report_dir, formats=_formats(format), console=console,
                          verbose=verbose, device=device)
    if outcome.by_status.get("failed"):
        console.print(f"[yellow]{outcome.by_status['failed']} job(s) failed: reasons are in the report[/]")


@app.command("enqueue")
def enqueue_cmd(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Folder of frames (recursive) or one image"),
    model: str = typer.Option("vesselness", help="Model whose workers take the jobs (selects the queue)"),
    gt: Optional[Path] = typer.Option(None, help="Ground truth: mask folder, LabelMe folder, annotations.json or COCO JSON"),
    run_name: Optional[str] = typer.Option(None, help="Name of the run (default: dataset-model-time); an existing run gets only new frames"),
    split: Optional[Path] = typer.Option(None, help="Only the frames listed in this split file (see `split`)"),
    prompt: Optional[str] = typer.Option(None, help="Text prompt for every job [SA2VA_PROMPT]"),
    urgent: bool = typer.Option(False, help="Send to the urgent queue (served before bulk)"),
    require_worker: bool = typer.Option(
        False, "--require-worker", help="Exit 3, storing nothing, when no worker serves this model version"),
    verbose: bool = typer.Option(False, "--verbose", help="List every note of the input scan, not only problems"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (run, queue, counts) and nothing else"),
) -> None:
    """Enqueue frames for workers that are already running (needs SA2VA_BROKER_URL); returns at once."""
    import json

    from sa2va_queue.cli import runner
    from sa2va_queue.core.modelspec import ModelSpec

    settings = _settings(ctx, prompt=prompt)
    if settings.is_local:
        raise ConfigError("enqueue needs SA2VA_BROKER_URL (a Redis that workers read); use `run` for a self-contained run")
    spec = ModelSpec.parse(model)
    store = runner.prepare(settings)
    workers = runner.workers_serving(settings, spec)
    if not workers:
        message = (f"no worker serves model {spec} (queue key {spec.key}); the jobs wait in the queue until "
                   f"one runs: `sa2va-queue worker --model '{spec}'`")
        if require_worker:
            err.print(f"[bold red]error:[/] {printable(message)}", highlight=False, soft_wrap=True)
            raise typer.Exit(3)
        err.print(f"[yellow]warning:[/] {printable(message)}", highlight=False, soft_wrap=True)
    out = Console(quiet=True) if as_json else console
    done = runner.enqueue_dataset(settings, store, dataset, spec=spec, gt=gt, run_name=run_name,
                                  split=split, urgent=urgent, console=out, verbose=verbose)
    if as_json:
        print(json.dumps({"run": done.run.name, "queue": done.queue, "sent": done.sent,
                          "skipped_existing": done.skipped_existing, "failed_at_validation": done.failed_at_validation,
                          "workers": workers}))
        return
    console.print(f"enqueued {done.sent} jobs to {done.queue} as run {printable(done.run.name)}; "
                  "follow with `sa2va-queue status`")


@app.command()
def worker(
    ctx: typer.Context,
    model: str = typer.Option("vesselness", help="NAME[:PATH][?key=value&...]; the worker serves exactly this model version"),
    gpus: Optional[str] = typer.Option(None, help="GPU indices to use, e.g. 0,1,2,3 (default: none, or what is visible)"),
    gpus_per_replica: int = typer.Option(1, help="GPUs per model replica: 4 = one model sharded over 4 GPUs"),
    concurrency: Optional[int] = typer.Option(None, help="Job threads (default 4 x max batch size): they only wait"),
    max_batch_size: Optional[int] = typer.Option(None, help="[SA2VA_MAX_BATCH_SIZE]"),
    max_queue_delay_ms: Optional[float] = typer.Option(None, help="[SA2VA_MAX_QUEUE_DELAY_MS]"),
    metrics_port: Optional[int] = typer.Option(None, help="Prometheus port (+ replica index); 0 = off [SA2VA_METRICS_PORT]"),
    device: Optional[str] = typer.Option(
        None, help="cpu, cuda, or auto (device map over the visible GPUs); default: cuda for sa2va when a GPU is visible, else cpu"),
    name: Optional[str] = typer.Option(None, help="Celery node name (must be unique)"),
    replica_index: Optional[int] = typer.Option(None, hidden=True),
    loglevel: str = typer.Option("INFO", help="Log level: DEBUG, INFO, WARNING, ERROR"),
) -> None:
    """Worker process(es): load the model once, then serve jobs in micro-batches."""
    from sa2va_queue.cli.local_worker import node_name
    from sa2va_queue.core.broker import check_broker, make_celery, queue_names, redis_client
    from sa2va_queue.core.modelspec import ModelSpec

    settings = _settings(ctx, max_batch_size=max_batch_size, max_queue_delay_ms=max_queue_delay_ms,
                         metrics_port=metrics_port)
    if settings.is_local:
        raise ConfigError("worker needs SA2VA_BROKER_URL (the Redis it takes jobs from)")
    check_broker(settings.broker_url)
    spec = ModelSpec.parse(model)
    if gpus is not None:  # supervisor: one child process per GPU group
        from sa2va_queue.cli.replicas import parse_gpus, plan_replicas, supervise

        replicas = plan_replicas(parse_gpus(gpus), gpus_per_replica)
        argv = ["--model", model, "--loglevel", loglevel]
        for flag, value in (("--concurrency", concurrency), ("--max-batch-size", settings.max_batch_size),
                            ("--max-queue-delay-ms", settings.max_queue_delay_ms), ("--device", device)):
            if value is not None:
                argv += [flag, str(value)]
        raise typer.Exit(supervise(replicas, argv, metrics_port=settings.metrics_port))

    _start_reading_weights(spec)
    from sa2va_queue.db.session import upgrade_schema
    from sa2va_queue.worker.heartbeat import Heartbeat
    from sa2va_queue.worker.janitor import Janitor
    from sa2va_queue.worker.runtime import start_runtime
    from sa2va_queue.worker.tasks import register

    from celery.signals import setup_logging, worker_shutting_down

    from sa2va_queue.worker.logs import configure

    configure(settings.log_format, loglevel)
    setup_logging.connect(lambda **_: configure(settings.log_format, loglevel), weak=False)  # Celery keeps ours
    suffix = f"-r{replica_index}" if replica_index is not None else ""
    node = name or node_name(spec.name + suffix)
    upgrade_schema(settings.sqlalchemy_url)  # a database without the schema is migrated, not a traceback
    rt = start_runtime(settings, spec, worker=node, device=device or _default_device(spec))  # exit 2 before any job
    gc.freeze()  # the model and the imports live as long as the worker: keep them out of every collection
    if settings.metrics_port:
        rt.metrics.serve(settings.metrics_port, settings.metrics_host)
    celery_app = make_celery(settings)
    register(celery_app, rt)
    threads = concurrency or max(4, 4 * settings.max_batch_size)
    client = redis_client(settings.broker_url)
    heartbeat = Heartbeat(client, node, queue_names(spec))
    heartbeat.beat()  # alive before the first claim
    heartbeat.start()
    janitor = Janitor(rt.store, client, make_celery(settings), list(queue_names(spec)), settings.janitor_interval_s)
    if settings.janitor_interval_s > 0:
        janitor.start()
    # Only a shutdown signal (SIGTERM, SIGINT, SIGQUIT) ends the worker; Celery returns 0 on some
    # broker crashes too, so the exit code alone cannot tell.
    stop_requested = threading.Event()
    worker_shutting_down.connect(lambda **_: stop_requested.set(), weak=False)
    argv = ["worker", "--pool=threads", f"--concurrency={threads}", "-Q", ",".join(queue_names(spec)),
            "-E", "-n", node, f"--loglevel={loglevel}", "--without-gossip", "--without-mingle"]
    try:
        for restart in range(CONSUMER_RESTARTS + 1):
            # Celery's consumer can die on a broker that vanishes mid-close (a kombu race in
            # restoring unacked messages): start it again with the model still loaded, rather than
            # exiting and paying the model load again. A warm shutdown (SIGTERM) returns 0.
            worker_log = logging.getLogger("sa2va_queue.worker")
            try:
                code = celery_app.start(argv) or 0
            except Exception:  # a crash while Celery stops itself: the same broker race
                worker_log.exception("the Celery worker failed while stopping")
                code = 1
            worker_log.info("the Celery worker returned exit code %s", code)
            if stop_requested.is_set() or restart == CONSUMER_RESTARTS:
                raise typer.Exit(code)
            worker_log.warning(
                "the Celery consumer stopped with exit code %s; starting it again (%d of %d)", code, restart + 1,
                CONSUMER_RESTARTS)
            time.sleep(min(30.0, 2.0 ** restart))
            celery_app = make_celery(settings)
            register(celery_app, rt)
    finally:
        janitor.stop()
        rt.close()
        heartbeat.stop()


@app.command()
def status(
    ctx: typer.Context,
    run_name: Optional[str] = typer.Option(None, "--run", help="Only this run (exit 2 when there is none)"),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON for scripts"),
) -> None:
    """Jobs per state and per run, model versions and their workers, queue depths, live workers."""
    from sa2va_queue.cli.status import print_status

    print_status(_settings(ctx), console, run_name=run_name, as_json=as_json)


@app.command()
def report(
    ctx: typer.Context,
    run_name: str = typer.Argument(..., help="Run to report on"),
    compare: Optional[str] = typer.Option(None, help="Another run: paired differences on the shared frames"),
    format: str = typer.Option("md,html,json", "--format", help="Report formats, comma-separated: md, html, json"),
    out: Optional[Path] = typer.Option(None, help="Output folder (default DATA_DIR/reports)"),
    split: Optional[Path] = typer.Option(None, help="Only the frames listed in this split file"),
) -> None:
    """Metrics with bootstrap confidence intervals, latency, figures, integrity checks."""
    from sa2va_queue.db.blobs import BlobStore
    from sa2va_queue.db.session import session_scope
    from sa2va_queue.core.pseudonyms import Pseudonymizer
    from sa2va_queue.producer.split import read_split
    from sa2va_queue.report.summarize import build_report, summary_table

    validate_run_name(run_name)
    if compare is not None:
        validate_run_name(compare)
    settings = _migrated(ctx)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        console.print(summary_table(session, run_name, pseudonymizer=pseudonymizer))
        paths = build_report(session, BlobStore(settings.blob_dir), run_name, pseudonymizer=pseudonymizer,
                             out_dir=out or settings.data_dir / "reports",
                             formats=_formats(format), compare=compare,
                             split_names=set(read_split(split)) if split else None)
    for fmt, path in paths.items():
        console.print(f"report ({fmt}): {printable(path)}")


@app.command()
def export(
    ctx: typer.Context,
    run_name: str = typer.Argument(..., help="Run whose results to export"),
    out: Path = typer.Argument(..., help="Folder to write into (created)"),
    format: str = typer.Option("png", "--format", help="png, npy, nifti, dicom-seg or dicom-overlay"),
) -> None:
    """Masks (and probability maps where stored) as files named after their frames (pseudonymised)."""
    from sa2va_queue.cli.export import export_run
    from sa2va_queue.core.pseudonyms import Pseudonymizer
    from sa2va_queue.db.blobs import BlobStore
    from sa2va_queue.db.session import session_scope

    validate_run_name(run_name)
    settings = _migrated(ctx)
    with session_scope(settings.sqlalchemy_url) as session:
        summary = export_run(session, BlobStore(settings.blob_dir), run_name, out, format,
                             pseudonymizer=Pseudonymizer.from_settings(settings))
    for problem in summary.problems:
        err.print(f"[yellow]warning:[/] {printable(problem)}", highlight=False)
    console.print(f"wrote {len(summary.written)} file(s) to {printable(out)}"
                  + (f"; {summary.without_result} frame(s) have no stored mask" if summary.without_result else ""))


@app.command()
def calibrate(
    ctx: typer.Context,
    run_name: str = typer.Argument(..., help="Run whose stored probability maps and ground truth to calibrate on"),
    split: Optional[Path] = typer.Option(None, help="Validation frames (split file); default: every frame of the run"),
) -> None:
    """Choose the run's model version's threshold on validation frames; later runs of that version use it."""
    from rich.markup import escape

    from sa2va_queue.core.pseudonyms import Pseudonymizer
    from sa2va_queue.db.blobs import BlobStore
    from sa2va_queue.db.session import session_scope
    from sa2va_queue.producer.split import read_split
    from sa2va_queue.report.calibrate import calibrate_run

    validate_run_name(run_name)
    settings = _migrated(ctx)
    with session_scope(settings.sqlalchemy_url) as session:
        result = calibrate_run(session, BlobStore(settings.blob_dir), run_name,
                               pseudonymizer=Pseudonymizer.from_settings(settings),
                               split_names=set(read_split(split)) if split else None)
        cal = result.calibration
        console.print(f"calibration {cal.id} for {cal.model_key}: threshold {cal.threshold:.2f}, mean Dice {cal.dice:.4f} "
                      f"on {cal.n_frames} frames of run {escape(cal.run_name)} (at the run's threshold "
                      f"{result.run_threshold:.2f}: {result.dice_at_run_threshold:.4f}); later runs of this model version use it")
        for warning in result.warnings:
            console.print(f"[yellow]{escape(warning)}[/]")


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write frames, masks and annotations into"),
    n: int = typer.Option(20, "--n", help="Number of frames"),
    seed: int = typer.Option(0, help="Random seed (same seed, same bytes)"),
    generator: str = typer.Option("synth", help="synth (512 px JPEG, polygons) or xa (independent generator: 8/16-bit, 512/1024 px, ribs, spine, catheter)"),
) -> None:
    """Synthetic angiography-like frames with masks (for demos, tests and transfer checks, not for claims)."""
    if generator == "synth":
        from sa2va_queue.producer.synth import generate
    elif generator == "xa":
        from sa2va_queue.producer.synth_xa import generate
    else:
        raise ConfigError(f"--generator {generator!r}: choose synth or xa")
    if n < 1:
        raise ConfigError("--n must be at least 1")
    with console.status(f"generating {n} frames ..."):
        paths = generate(out, n=n, seed=seed)
    console.print(f"wrote {len(paths)} frames with masks and annotations to {printable(out)}")


@app.command()
def split(
    ctx: typer.Context,
    dataset: Path = typer.Argument(..., help="Folder of frames"),
    by: str = typer.Option("sequence", help="sequence or patient"),
    pattern: Optional[str] = typer.Option(None, help="Regex with a `sequence` (and `patient`) group"),
    test: float = typer.Option(0.2, help="Fraction of frames in the test split"),
    seed: int = typer.Option(0, help="Random seed of the group assignment (same seed, same split)"),
    out: Optional[Path] = typer.Option(None, help="Folder for train/test .txt (pseudonymised), .PHI.txt (raw names), split.json (default DATASET/splits)"),
) -> None:
    """Split frames by sequence (or patient) so near-identical frames never straddle train and test."""
    from sa2va_queue.core.pseudonyms import Pseudonymizer
    from sa2va_queue.producer.dataset import list_images
    from sa2va_queue.producer.split import split_names, write_split

    if by not in ("sequence", "patient"):
        raise ConfigError(f"--by {by!r}: choose sequence or patient")
    if not 0.0 < test < 1.0:
        raise ConfigError(f"--test {test}: give a fraction between 0 and 1")
    names = list_images(dataset)
    result = split_names(names, by=by, pattern=pattern, test=test, seed=seed)
    paths = write_split(result, out or dataset / "splits", pattern,
                        pseudonymizer=Pseudonymizer.from_settings(_settings(ctx)))
    console.print(f"{len(result.train)} train / {len(result.test)} test frames in {len(result.groups)} groups: "
                  + ", ".join(printable(p) for p in paths))


@app.command()
def requeue(
    ctx: typer.Context,
    run_name: Optional[str] = typer.Option(None, "--run", help="Only this run"),
    stale: bool = typer.Option(True, help="Re-send jobs that never finished (lost by the broker or a dead worker)"),
    older_than: float = typer.Option(600.0, help="Stale means untouched for this many seconds"),
    dead: bool = typer.Option(False, help="Re-send dead-lettered jobs (they used up their attempts)"),
    failed: bool = typer.Option(False, help="Re-send every failed job that has an image (attempts start over)"),
) -> None:
    """Re-send jobs from the database: stale ones, dead-lettered ones, or all failed ones."""
    from sa2va_queue.cli.runner import prepare
    from sa2va_queue.core.broker import make_celery
    from sa2va_queue.worker.janitor import resend

    settings = _settings(ctx)
    if settings.is_local:
        raise ConfigError("requeue needs SA2VA_BROKER_URL (the Redis that workers read)")
    store = prepare(settings)
    targets = store.requeue_targets(run_name=run_name, stale_after_s=older_than if stale else None,
                                    failed=failed, dead=dead)
    celery_app = make_celery(settings)
    try:
        resend(store, celery_app, targets)
    finally:
        celery_app.close()
    console.print(f"re-sent {len(targets)} job(s)")


@app.command()
def monitor(
    ctx: typer.Context,
    port: Optional[int] = typer.Option(None, help="Port to listen on [SA2VA_FLOWER_PORT]"),
    address: str = typer.Option("127.0.0.1", help="Interface to listen on (0.0.0.0: every interface)"),
) -> None:
    """Flower on the broker, with basic auth (SA2VA_FLOWER_USER / SA2VA_FLOWER_PASSWORD): every job's life."""
    import os

    from sa2va_queue.cli.flower import flower_environment, run_flower
    from sa2va_queue.core.broker import check_broker

    settings = _settings(ctx, flower_port=port)
    if settings.is_local:
        raise ConfigError("monitor needs SA2VA_BROKER_URL (the Redis the workers use)")
    env = flower_environment(settings, address, dict(os.environ))  # secrets via the environment, never argv
    check_broker(settings.broker_url)
    console.print(f"Flower on http://{printable(address)}:{settings.flower_port} (user {printable(settings.flower_user)}); "
                  f"history kept in {printable(settings.data_dir / 'flower')}")
    raise typer.Exit(run_flower(env))


@app.command()
def migrate(ctx: typer.Context) -> None:
    """Create or upgrade the database schema (Alembic) at SA2VA_DATABASE_URL."""
    _migrated(ctx)
    console.print("database schema is up to date")


cli_model.register(app)  # `convert` and `inspect`; they import torch only when run
cli_pacs.register(app)  # `pacs listen`, `pacs status`; pynetdicom imported only when run


def _flags_as_flags(command) -> None:
    """Help shows on/off options as bare flags: typer gives them a `<bool>` metavar otherwise."""
    help_option = command.get_help_option(command.context_class(command))  # made once, cached
    for param in [*command.params, help_option]:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_as_flags(sub)


def main() -> None:
    try:
        command = typer.main.get_command(app)
        _flags_as_flags(command)
        command(standalone_mode=True, prog_name="sa2va-queue")
    except Sa2vaQueueError as exc:
        err.print(f"[bold red]error:[/] {printable(exc)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    finally:
        # Interpreter shutdown would run the cyclic collector over every object the imports made
        # (SQLAlchemy, Celery, rich): 0.2 s of each command's wall time on the 2-core VM. Frozen
        # objects are skipped; atexit handlers and finalizers still run.
        gc.freeze()


if __name__ == "__main__":
    main()
