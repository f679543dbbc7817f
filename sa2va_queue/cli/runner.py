"""The main job: scan a dataset, put every frame through the queue, wait, summarize.

With no broker configured, `run` starts what it needs (a private Redis, SQLite, one local worker)
and stops it afterwards; with SA2VA_BROKER_URL set it uses that Redis and the workers already
serving the model version's queues. Frames stream from the scan into the job store and the broker
a chunk at a time, so the worker starts on the first frames while later ones are still read.
"""

from __future__ import annotations

import contextlib
import re
import importlib
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator

import redis
from celery import Celery
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.cli.services import LocalRedis
from sa2va_queue.core.broker import check_broker, make_celery, queue_names, redis_client
from sa2va_queue.core.exceptions import ConfigError, ServiceUnavailable
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.names import printable, validate_run_name
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.db.models import FINAL_STATUSES
from sa2va_queue.db.session import check_database, upgrade_schema
from sa2va_queue.producer.dataset import DatasetScan, issues_table
from sa2va_queue.producer.enqueue import Produced, open_run, produce
from sa2va_queue.producer.split import read_split
from sa2va_queue.report.drawing import FigurePool, draws_figures
from sa2va_queue.worker.heartbeat import serving
from sa2va_queue.worker.janitor import resend

_FINAL = {s.value for s in FINAL_STATUSES}
WORKER_RESTARTS = 3


@dataclass
class RunOutcome:
    run_name: str
    total: int
    by_status: dict[str, int]
    reports: dict[str, Path]


def default_run_name(dataset: Path, model: ModelSpec) -> str:
    """`<folder>-<model>-<time>`, the folder slugged and cut so the name is always a valid run name."""
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.resolve().name).strip("_.-")[:80] or "dataset"
    return validate_run_name(f"{folder}-{model.name}-{datetime.now():%Y%m%d-%H%M%S}")


def prepare(settings: Settings) -> JobStore:
    """Data dir, database reachable and migrated, broker reachable (when configured)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    check_database(settings.sqlalchemy_url)
    upgrade_schema(settings.sqlalchemy_url)
    if settings.broker_url is not None:
        check_broker(settings.broker_url)
    return JobStore(settings.sqlalchemy_url, BlobStore(settings.blob_dir))


def workers_serving(settings: Settings, spec: ModelSpec) -> list[str]:
    """Live workers consuming this model version's queues: found by the queues their heartbeat
    announces (worker/heartbeat.py), not by node name, in one Redis round trip."""
    return serving(redis_client(settings.broker_url), queue_names(spec))


class Stack:
    """The services a run depends on; `check()` says in one line when one of them died."""

    def __init__(self, settings: Settings, worker: WorkerProcess | None = None,
                 redis_server: LocalRedis | None = None, app: Celery | None = None) -> None:
        self.settings, self.worker, self.redis_server, self.app = settings, worker, redis_server, app
        self.restarts = 0

    def check(self) -> None:
        if self.redis_server is not None and not self.redis_server.alive():
            raise ServiceUnavailable(
                f"the private Redis stopped (see {self.redis_server.log_path}); the jobs are safe in the database: "
                "run the same command again to resume")
        if self.worker is not None and not self.worker.alive():
            if self.restarts >= WORKER_RESTARTS:
                raise ServiceUnavailable(f"the local worker died {self.restarts + 1} times: {self.worker.log_tail()}")
            self.restarts += 1
            assert self.app is not None
            self.worker = WorkerProcess(self.settings, self.worker.model, log_path=self.worker.log_path,
                                        extra_args=self.worker.extra_args).start(self.app)


@contextlib.contextmanager
def local_stack(settings: Settings, spec: ModelSpec, console: Console, device: str | None = None) -> Iterator[Stack]:
    """A Stack whose settings point at a running broker and a worker serving `spec`."""
    if not settings.is_local:
        yield Stack(settings)
        return
    with LocalRedis(settings.data_dir) as redis_server:
        local = settings.with_(broker_url=redis_server.url, database_url=settings.sqlalchemy_url)
        app = make_celery(local)
        extra = ["--device", device] if device else []
        worker = WorkerProcess(local, str(spec), log_path=settings.data_dir / "logs" / "worker.log", extra_args=extra)
        with console.status(f"starting a local worker for {printable(spec)} ..."):
            worker.start(app)
        stack = Stack(local, worker, redis_server, app)
        try:
            yield stack
        finally:
            stack.worker.stop()
            app.close()


def enqueue_dataset(settings: Settings, store: JobStore, dataset: Path, *, spec: ModelSpec, gt: Path | None,
                    run_name: str | None, split: Path | None, urgent: bool, console: Console,
                    verbose: bool = False, resume: bool = False) -> Produced:
    """Scan, store and send every frame, streaming; prints the input problems found on the way.
    `resume`: the run's unfinished jobs are sent again at once (a private broker starts empty)."""
    if not dataset.exists():
        raise ConfigError(f"dataset {dataset} does not exist; give a folder of frames or an image file")
    name = validate_run_name(run_name) if run_name else default_run_name(dataset, spec)
    pseudonymizer = Pseudonymizer.from_settings(settings)
    scan = DatasetScan(dataset, gt=gt, split=split, pseudonymizer=pseudonymizer)
    if scan.total == 0 and not scan.issues:
        raise ConfigError(f"no images found under {dataset} (looked for .png .jpg .jpeg .tif .tiff .dcm)")
    run = open_run(store, name=name, spec=spec, dataset=str(dataset.resolve()), prompt=settings.prompt,
                   split=str(split) if split else None)
    app = make_celery(settings)
    try:
        if resume and not run.created:
            resent = resend(store, app, store.unfinished(run.id))
            if resent:
                console.print(f"run {printable(name)}: {resent} unfinished job(s) sent again")
        with _progress(console) as progress:
            task = progress.add_task("enqueue", total=scan.total)
            done = produce(store, app, scan.frames(finish=False), run, urgent=urgent, pseudonymizer=pseudonymizer,
                           on_progress=lambda n: progress.advance(task, n))
        scan.finish()  # after the last chunk is sent: it may parse a root annotations.json no frame needed
    finally:
        app.close()
    shown = [i for i in scan.issues if verbose or i.severity != "info"]
    if shown:
        console.print(issues_table(shown))
    if len(shown) < len(scan.issues):
        console.print(f"[dim]{len(scan.issues) - len(shown)} note(s) on which ground-truth file was used; "
                      "--verbose lists them[/]")
    console.print(
        f"run [bold]{printable(name)}[/]: {done.sent} jobs sent to {done.queue}"
        + (f", {done.skipped_existing} already in this run" if done.skipped_existing else "")
        + (f", {done.failed_at_validation} failed validation" if done.failed_at_validation else ""))
    return done


def run_dataset(settings: Settings, dataset: Path, *, model: str, gt: Path | None, run_name: str | None,
                split: Path | None, urgent: bool, timeout_s: float, report_dir: Path | None, formats: list[str],
                console: Console, verbose: bool = False, device: str | None = None) -> RunOutcome:
    spec = ModelSpec.parse(model)  # an unknown model or bad option fails here, before any service starts
    if run_name is not None:
        validate_run_name(run_name)
    store = prepare(settings)
    # the report's modules (matplotlib, scipy) take seconds to import: load them while jobs run
    threading.Thread(target=importlib.import_module, args=("sa2va_queue.report.summarize",), daemon=True).start()
    # and its figures are drawn side by side in processes that start now (a text report draws some)
    with FigurePool.ahead() if draws_figures(formats) else FigurePool(0) as pool:
        with local_stack(settings, spec, console, device) as stack:
            live = stack.settings
            if not live.is_local:
                require_workers(live, spec)
            done = enqueue_dataset(live, store, dataset, spec=spec, gt=gt, run_name=run_name, split=split,
                                   urgent=urgent, console=console, verbose=verbose, resume=live is not settings)
            counts = _wait(store, stack, done.run.id, timeout_s, console)
        reports = _report(settings, done.run.name, report_dir, formats, split, console, pool)
    return RunOutcome(run_name=done.run.name, total=sum(counts.values()), by_status=counts, reports=reports)


def require_workers(settings: Settings, spec: ModelSpec) -> list[str]:
    names = workers_serving(settings, spec)
    if not names:
        raise ServiceUnavailable(
            f"no worker serves model {spec} (queue key {spec.key}) on SA2VA_BROKER_URL; "
            f"start one with `sa2va-queue worker --model '{spec}'`")
    return names


def _wait(store: JobStore, stack: Stack, run_id: int, timeout_s: float, console: Console) -> dict[str, int]:
    deadline = time.monotonic() + timeout_s
    # one client for the whole wait: the loop pings every 100 ms
    client = redis_client(stack.settings.broker_url) if stack.settings.broker_url is not None else None
    with _progress(console) as progress:
        task = progress.add_task("segment", total=None)
        while True:
            counts = store.run_counts(run_id)
            total = sum(counts.values())
            final = sum(n for s, n in counts.items() if s in _FINAL)
            progress.update(task, total=total, completed=final)
            if final >= total:
                return counts
            stack.check()
            if client is not None:
                try:
                    _ping(client)
                except ServiceUnavailable:
                    stack.check()  # a private Redis that died in between says so, naming its log
                    raise
            if time.monotonic() > deadline:
                raise ServiceUnavailable(
                    f"{total - final} of {total} jobs unfinished after {timeout_s:.0f} s; are workers running "
                    "(`sa2va-queue status`)? The jobs stay in the database: `sa2va-queue report` when they finish")
            time.sleep(0.1)


def _ping(client: redis.Redis) -> None:
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(f"Redis stopped answering while waiting ({exc}); the jobs are safe in the "
                                 "database: run the same command again once it is back") from None


def _report(settings: Settings, name: str, report_dir: Path | None, formats: list[str], split: Path | None,
            console: Console, figure_pool: FigurePool | None = None) -> dict[str, Path]:
    from sa2va_queue.core.pseudonyms import Pseudonymizer
    from sa2va_queue.db.session import session_scope
    from sa2va_queue.report.summarize import build_report, summary_table

    out_dir = report_dir or settings.data_dir / "reports"
    pseudonymizer = Pseudonymizer.from_settings(settings)
    with session_scope(settings.sqlalchemy_url) as session:
        console.print(summary_table(session, name, pseudonymizer=pseudonymizer))
        with console.status("writing the report ..."):
            paths = build_report(session, BlobStore(settings.blob_dir), name, out_dir=out_dir, formats=formats,
                                 pseudonymizer=pseudonymizer, split_names=set(read_split(split)) if split else None,
                                 figure_pool=figure_pool)
    for fmt, path in paths.items():
        console.print(f"report ({fmt}): {printable(path)}")
    return paths


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
