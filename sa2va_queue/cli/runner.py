"""The main job: scan a dataset, put every frame through the queue, wait, summarize.

With no broker configured, `run` starts what it needs (a private Redis, SQLite, one local worker)
and stops it afterwards; with SA2VA_BROKER_URL set it uses that Redis and the workers already
serving the model's queues.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from sqlalchemy import func, select

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import FINAL_STATUSES, Job
from sa2va_queue.db.session import check_database, get_sessionmaker, session_scope, upgrade_schema
from sa2va_queue.producer import enqueue
from sa2va_queue.producer.dataset import ScanResult, issues_table, scan_dataset
from sa2va_queue.producer.split import read_split
from sa2va_queue.core.exceptions import ConfigError, ServiceUnavailable
from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.cli.services import LocalRedis, check_broker
from sa2va_queue.core.settings import Settings
from sa2va_queue.core.broker import make_celery, queue_names
from sa2va_queue.worker.backends import build_model
from sa2va_queue.core.modelspec import ModelSpec


@dataclass
class RunOutcome:
    run_name: str
    total: int
    by_status: dict[str, int]
    reports: dict[str, Path]


def default_run_name(dataset: Path, model: ModelSpec) -> str:
    return f"{dataset.resolve().name}-{model.name}-{datetime.now():%Y%m%d-%H%M%S}"


def prepare(settings: Settings) -> None:
    """Data dir, database reachable and migrated, broker reachable (when configured)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_database(settings.sqlalchemy_url)
    upgrade_schema(settings.sqlalchemy_url)
    if settings.broker_url is not None:
        check_broker(settings.broker_url)


def scan(dataset: Path, gt: Path | None, split: Path | None, console: Console, verbose: bool = False) -> ScanResult:
    if not dataset.exists():
        raise ConfigError(f"dataset {dataset} does not exist; give a folder of frames or an image file")
    result = scan_dataset(dataset, gt=gt, split=split)
    shown = [i for i in result.issues if verbose or i.severity != "info"]
    if shown:
        console.print(issues_table(shown))
    if len(shown) < len(result.issues):
        console.print(f"[dim]{len(result.issues) - len(shown)} note(s) on which ground-truth file was used; --verbose lists them[/]")
    if not result.frames:
        raise ConfigError(f"no images found under {dataset} (looked for .png .jpg .jpeg .tif .tiff)")
    return result


@contextlib.contextmanager
def local_stack(settings: Settings, model: str, tag: str, console: Console) -> Iterator[Settings]:
    """Yields settings that point at a running broker and a worker serving `tag`."""
    if not settings.is_local:
        yield settings
        return
    with LocalRedis(settings.data_dir) as redis_server:
        local = settings.with_(broker_url=redis_server.url, database_url=settings.sqlalchemy_url)
        app = make_celery(local)
        worker = WorkerProcess(local, model, tag=tag, log_path=settings.data_dir / "logs" / "worker.log")
        with console.status(f"starting a local worker for {model} ..."):
            worker.start(app)
        try:
            yield local
        finally:
            worker.stop()
            app.close()


@dataclass
class Enqueued:
    run_name: str
    run_id: int
    queue: str
    sent: int


def enqueue_dataset(
    settings: Settings,
    dataset: Path,
    *,
    spec: ModelSpec,
    gt: Path | None,
    run_name: str | None,
    split: Path | None,
    urgent: bool,
    console: Console,
    verbose: bool = False,
) -> Enqueued:
    """Scan, store every frame and its job in SQL, then send the messages (broker must be set)."""
    threshold = build_model(spec).threshold  # an unknown model or bad option fails before anything is stored
    found = scan(dataset, gt, split, console, verbose)
    name = run_name or default_run_name(dataset, spec)
    urgent_q, bulk_q = queue_names(spec.name)
    queue = urgent_q if urgent else bulk_q
    with session_scope(settings.sqlalchemy_url) as session:
        run = enqueue.get_or_create_run(
            session, name=name, model_spec=str(spec), dataset=str(dataset.resolve()), prompt=settings.prompt,
            threshold=threshold, split=str(split) if split else None,
        )
        with console.status(f"storing {len(found.frames)} frames in the database ..."):
            reg = enqueue.register_frames(session, BlobStore(settings.blob_dir), run, found.frames,
                                          queue=queue, prompt=settings.prompt)
        run_id = run.id
    console.print(
        f"run [bold]{name}[/]: {len(reg.new_job_ids)} jobs to send"
        + (f", {reg.skipped_existing} already in this run" if reg.skipped_existing else "")
        + (f", {reg.failed_at_validation} failed validation" if reg.failed_at_validation else "")
    )
    app = make_celery(settings)
    try:
        with _progress(console) as progress:
            task = progress.add_task("enqueue", total=len(reg.new_job_ids))
            enqueue.send_jobs(app, get_sessionmaker(settings.sqlalchemy_url), reg.new_job_ids, queue,
                              on_sent=lambda n: progress.advance(task, n))
    finally:
        app.close()
    return Enqueued(run_name=name, run_id=run_id, queue=queue, sent=len(reg.new_job_ids))


def run_dataset(
    settings: Settings,
    dataset: Path,
    *,
    model: str,
    gt: Path | None,
    run_name: str | None,
    split: Path | None,
    urgent: bool,
    timeout_s: float,
    report_dir: Path | None,
    formats: list[str],
    console: Console,
    verbose: bool = False,
) -> RunOutcome:
    spec = ModelSpec.parse(model)
    build_model(spec)  # an unknown model or bad option fails here, before any service starts
    prepare(settings)
    with local_stack(settings, str(spec), spec.name, console) as live:
        if not live.is_local:
            _require_workers(live, spec.name)
        done = enqueue_dataset(live, dataset, spec=spec, gt=gt, run_name=run_name, split=split, urgent=urgent,
                               console=console, verbose=verbose)
        counts = _wait(live, done.run_id, timeout_s, console)
    reports = _report(settings, done.run_name, report_dir, formats, split, console)
    return RunOutcome(run_name=done.run_name, total=sum(counts.values()), by_status=counts, reports=reports)


def _wait(settings: Settings, run_id: int, timeout_s: float, console: Console) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    with _progress(console) as progress:
        task = progress.add_task("segment", total=None)
        while True:
            counts = run_counts(settings.sqlalchemy_url, run_id)
            total = sum(counts.values())
            final = sum(counts.get(s.value, 0) for s in FINAL_STATUSES)
            progress.update(task, total=total, completed=final)
            if final >= total:
                return counts
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"{total - final} of {total} jobs unfinished after {timeout_s:.0f} s; are workers running "
                    "(`sa2va-queue status`)? The run continues when they are: see `sa2va-queue report`"
                )
            time.sleep(0.25)


def run_counts(db_url: str, run_id: int) -> dict[str, int]:
    with session_scope(db_url) as session:
        rows = session.execute(select(Job.status, func.count()).where(Job.run_id == run_id).group_by(Job.status))
        return {status.value: n for status, n in rows}


def _require_workers(settings: Settings, tag: str) -> None:
    app = make_celery(settings)
    try:
        replies = app.control.ping(timeout=2.0)
    finally:
        app.close()
    names = [name for reply in replies for name in reply]
    if not any(name.startswith(f"{tag}-") for name in names):
        raise ServiceUnavailable(
            f"no worker serves model {tag!r} on SA2VA_BROKER_URL (found: {', '.join(names) or 'none'}); "
            f"start one with `sa2va-queue worker --model {tag}`"
        )


def _report(settings, name, report_dir, formats, split, console) -> dict[str, Path]:
    from sa2va_queue.report.summarize import build_report, summary_table

    out_dir = report_dir or settings.data_dir / "reports"
    with session_scope(settings.sqlalchemy_url) as session:
        console.print(summary_table(session, name))
        with console.status("writing the report ..."):
            paths = build_report(session, BlobStore(settings.blob_dir), name, out_dir=out_dir, formats=formats,
                                 split_names=set(read_split(split)) if split else None)
    for fmt, path in paths.items():
        console.print(f"report ({fmt}): {path}")
    return paths


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
