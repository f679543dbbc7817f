"""A worker's stages around its model; claims and completions are one SQL transaction each.

    task threads ─job id─► intake ──claim (1 txn)──► decode + preprocess (pool) ─┐
                                                                                  ▼
                           writer ◄── model results ◄── MicroBatcher (model thread, batches formed
                             │                          when the model is free)
                             │ mask/probability PNGs (pool), metrics (processes)
                             ▼
                           completer: every result ready at that moment (1 txn) ─► tasks return

Task threads only wait: the intake claims every job waiting at that moment in one statement, the
completer stores every result ready at that moment in one transaction. Host work (decoding,
preprocessing, PNG encoding) runs in a thread pool beside the model thread, never in it; metrics
(ground-truth decoding, clDice skeletons, surface distances, the Dice sweep) run in a few spawned
processes, so they use the host's cores and not the worker's interpreter lock, and the writer does
not wait for them: a result moves on to the completer when its metrics are in. Metrics come from
the in-memory mask (sent as packed bits) and the stored ground-truth PNG; nothing is read back after
it is written. The ground truth never reaches the model: it travels beside the request, not in it.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import threading
import time
from datetime import datetime, timezone
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from sa2va_queue.core.exceptions import InputError, JobFailed, NotFound
from sa2va_queue.core.imaging import (decode_image, decode_mask, encode_mask, encode_quantized_probability,
                                       quantize_probability)
from sa2va_queue.core.metrics import compute_metrics, dice_sweep_quantized
from sa2va_queue.core.processes import die_with_parent
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.db.jobstore import ClaimedJob, JobStore, Outcome
from sa2va_queue.db.models import JobStatus
from sa2va_queue.worker.backends.base import SegmentationModel, SegmentationRequest, SegmentationResult
from sa2va_queue.worker.batcher import MicroBatcher, collect_batch

log = logging.getLogger(__name__)

_POLL_S = 0.1
# Celery hands a worker its messages one at a time, a few ms apart. Waiting up to 20 ms for more
# makes claims of ~8-16 jobs instead of ~3 (5 ms): one UPDATE and one commit per claim, so the
# database's CPU per job falls. Measured on the 2-core VM, PostgreSQL, 2000 no-op jobs: worker CPU
# 3.3-4.8 -> 2.8 ms per job. 20 ms is small beside a model's forward pass (urgent jobs included).
CLAIM_GATHER_S = 0.02


@dataclass(frozen=True)
class JobOutcome:
    """What a task returns: final status, or `handed_back` with the queue of the right workers."""

    job_id: str
    status: str
    queue: str | None = None
    batch_size: int | None = None
    dice: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class _Done:
    job: ClaimedJob
    future: "Future[JobOutcome]"
    preprocess_ms: float = 0.0
    result: SegmentationResult | None = None
    info: dict[str, float] | None = None
    error: str | None = None


class JobPipeline:
    """Intake, model and writer stages of one worker process. `submit(job_id)` from any thread."""

    def __init__(self, store: JobStore, model: SegmentationModel, *, worker: str, model_key: str,
                 version_id: int, max_batch_size: int, max_delay_s: float, max_attempts: int,
                 store_probabilities: bool, host_threads: int | None = None, metric_processes: int = -1,
                 metric_nice: int = 0,
                 on_batch: Callable[[int, float], None] | None = None,
                 observe: Callable[[str, float], None] | None = None,
                 pseudonymizer: Pseudonymizer | None = None) -> None:
        self.store, self.model, self.worker, self.model_key = store, model, worker, model_key
        self.version_id, self.max_attempts, self.store_probabilities = version_id, max_attempts, store_probabilities
        self.pseudonymizer = pseudonymizer
        self.max_claim = max(8, 2 * max_batch_size)
        self.batcher: MicroBatcher[Any, SegmentationResult] = MicroBatcher(
            model.predict, max_batch_size=max_batch_size, max_delay_s=max_delay_s, on_batch=on_batch)
        self._observe = observe or (lambda name, value: None)
        self._intake: queue.Queue[tuple[str, Future[JobOutcome]]] = queue.Queue()
        self._written: queue.Queue[_Done] = queue.Queue()
        # (result, outcome or None, failure reason or None), ready to be stored
        self._ready: queue.Queue[tuple[_Done, Outcome | None, str | None]] = queue.Queue()
        cores = os.cpu_count() or 2
        self._pool = ThreadPoolExecutor(max_workers=host_threads or min(8, cores), thread_name_prefix="host")
        # Metrics (clDice skeletons, surface distances) hold the GIL for tens of ms on a large mask:
        # in processes they use the host's cores instead of stalling the worker's threads.
        n_proc = default_metric_processes(cores) if metric_processes < 0 else metric_processes  # 0: inline
        self._metrics = MetricPool(n_proc, nice=metric_nice) if n_proc > 0 else None
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(self._intake_once,), name="intake", daemon=True),
                         threading.Thread(target=self._loop, args=(self._write_once,), name="writer", daemon=True),
                         threading.Thread(target=self._loop, args=(self._complete_once,), name="completer",
                                          daemon=True)]

    def start(self) -> "JobPipeline":
        if self._metrics is not None:  # start the processes now, not on the first job
            self._metrics.submit(compute_metrics, np.zeros((2, 2), bool), np.zeros((2, 2), bool)).result()
        self.batcher.start()
        for t in self._threads:
            t.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """After the tasks in flight have returned (Celery's warm shutdown waits for them)."""
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        self.batcher.stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._metrics is not None:
            self._metrics.shutdown()

    def submit(self, job_id: str) -> "Future[JobOutcome]":
        future: Future[JobOutcome] = Future()
        self._intake.put((job_id, future))
        return future

    # ------------------------------------------------------------------ intake
    def _intake_once(self) -> None:
        # a short wait lets the jobs Celery is handing over right now join one claim
        waiting = collect_batch(self._intake, self.max_claim, CLAIM_GATHER_S, block_timeout=_POLL_S)
        if not waiting:
            return
        futures: dict[str, list[Future[JobOutcome]]] = {}
        for job_id, future in waiting:
            futures.setdefault(job_id, []).append(future)
        try:
            claim = self.store.claim(list(futures), worker=self.worker, model_key=self.model_key,
                                     max_attempts=self.max_attempts)
        except Exception as exc:  # database down: every task of the batch retries with backoff
            for fs in futures.values():
                for f in fs:
                    f.set_exception(exc)
            return
        for job_id in claim.final:
            _resolve(futures.pop(job_id), JobOutcome(job_id, "already_final"))
        for job_id, q in claim.foreign:
            _resolve(futures.pop(job_id), JobOutcome(job_id, "handed_back", queue=q))
        for job_id in claim.missing:
            _fail(futures.pop(job_id), NotFound(f"job {job_id} is not in the database (was it enqueued to "
                                                "another database?)"))
        for job_id, reason in claim.failed.items():
            _fail(futures.pop(job_id), JobFailed(self._private(reason, claim.names.get(job_id))))
        for job in claim.jobs:
            fs = futures.pop(job.id)
            for extra in fs[1:]:  # the same job delivered twice at once: answer the copy as final
                extra.set_result(JobOutcome(job.id, "already_final"))
            if job.enqueued_at is not None and job.started_at is not None:
                self._observe("queue_wait", max(0.0, (job.started_at - job.enqueued_at).total_seconds()))
            self._pool.submit(self._prepare, _Done(job, fs[0]))

    def _prepare(self, done: _Done) -> None:
        """Host side, in the pool: decode and preprocess, then queue for the model."""
        start = time.perf_counter()
        try:
            image = decode_image(done.job.image, done.job.name)
            item = self.model.preprocess(SegmentationRequest(done.job.id, image, done.job.prompt))
        except InputError as exc:
            done.error = str(exc)
            self._written.put(done)
            return
        except Exception as exc:  # a backend bug in preprocess fails this job alone
            # job id and type only: the message of a bad input starts with the frame name (may be PHI)
            log.error("preprocess failed for job %s: %s", done.job.id, type(exc).__name__)
            done.error = f"{done.job.name}: {type(exc).__name__}: {exc}"
            self._written.put(done)
            return
        done.preprocess_ms = (time.perf_counter() - start) * 1000.0
        self._observe("preprocess", done.preprocess_ms / 1000.0)
        self.batcher.submit(item).add_done_callback(lambda f: self._predicted(done, f))

    def _predicted(self, done: _Done, future: Future) -> None:
        exc = future.exception()
        if exc is not None:
            done.error = f"{done.job.name}: {type(exc).__name__}: {exc}"
        else:
            done.result, done.info = future.result()
        self._written.put(done)

    # ------------------------------------------------------------------ writer and completer
    def _write_once(self) -> None:
        """PNGs in the thread pool, metrics handed to the metric processes; each result goes on to
        the completer when its metrics are in. The writer never waits for metrics, so several
        batches' metrics run at once and a slow frame holds up no other."""
        batch = collect_batch(self._written, 64, 0.002, block_timeout=_POLL_S)
        if not batch:
            return
        for done, finished in zip(batch, self._pool.map(self._finish_one, batch)):
            if isinstance(finished, str):
                self._ready.put((done, None, finished))
                continue
            outcome, task = finished
            if task is None:
                self._ready.put((done, outcome, None))
            else:
                self._score(task).add_done_callback(lambda f, d=done, o=outcome: self._scored(d, o, f))

    def _scored(self, done: _Done, outcome: Outcome, future: Future) -> None:
        try:
            outcome.metrics, outcome.dice_sweep = future.result()
        except InputError as exc:  # the ground truth cannot be read, or its size differs
            self._ready.put((done, None, str(exc)))
            return
        except Exception as exc:  # a metric that cannot be computed fails its job, with the reason
            self._ready.put((done, None, f"metrics failed: {type(exc).__name__}: {exc}"))
            return
        self._ready.put((done, outcome, None))

    def _complete_once(self) -> None:
        """Every result ready at this moment: one transaction, then the tasks are answered."""
        batch = collect_batch(self._ready, 64, 0.002, block_timeout=_POLL_S)
        if not batch:
            return
        outcomes = [o for _, o, _ in batch if o is not None]
        failures = {d.job.id: reason for d, _, reason in batch if reason is not None}
        try:
            self.store.complete(outcomes, failures, model_version_id=self.version_id)
        except Exception as exc:  # database down: the tasks retry; results are idempotent
            for done, _, _ in batch:
                done.future.set_exception(exc)
            return
        finished = datetime.now(timezone.utc)
        for done, outcome, reason in batch:
            if outcome is None:
                done.future.set_exception(JobFailed(self._private(reason or "failed", done.job.name)))
                continue
            if done.job.enqueued_at is not None:
                self._observe("end_to_end", max(0.0, (finished - done.job.enqueued_at).total_seconds()))
            dice = outcome.metrics.get("dice") if outcome.metrics else None
            done.future.set_result(JobOutcome(done.job.id, outcome.status.value, batch_size=outcome.batch_size,
                                              dice=dice))

    def _private(self, reason: str, name: str | None) -> str:
        """The reason as Celery logs it and Flower shows it: the frame name pseudonymised (the job
        row keeps the reason as written; reports scrub it on their own)."""
        if not name or self.pseudonymizer is None:
            return reason
        return reason.replace(name, self.pseudonymizer.name(name))

    def _score(self, task: "ScoreTask") -> "Future[tuple[dict[str, Any], bytes | None]]":
        if self._metrics is None:
            future: Future = Future()
            try:
                future.set_result(score_frame(task))
            except Exception as exc:  # reported through the future, as from a process
                future.set_exception(exc)
            return future
        return self._metrics.submit(score_frame, task)

    def _finish_one(self, done: _Done) -> "tuple[Outcome, ScoreTask | None] | str":
        """Host side, in the thread pool: mask at the run's threshold and the PNGs; with ground
        truth, what the metric processes need. A string is a failure."""
        if done.error is not None:
            return done.error
        result, info, job = done.result, done.info or {}, done.job
        assert result is not None
        try:
            if result.no_segmentation:
                mask = np.zeros(result.probability.shape, bool)
            elif abs(job.threshold - float(self.model.threshold)) < 1e-12:
                mask = result.mask
            else:  # a calibrated threshold for this run
                mask = result.probability > job.threshold
            prob_png = q = None
            if self.store_probabilities:
                q = quantize_probability(result.probability)
                prob_png = encode_quantized_probability(q)
            outcome = Outcome(
                job_id=job.id, status=JobStatus.no_segmentation if result.no_segmentation else JobStatus.done,
                mask_png=encode_mask(mask), prob_png=prob_png,
                text=result.text, threshold=job.threshold, batch_size=int(info.get("batch_size", 1)),
                preprocess_ms=done.preprocess_ms, compute_ms=float(info.get("compute_ms", 0.0)), metrics=None)
            task = None
            if job.gt_mask_png is not None:
                task = ScoreTask(np.packbits(mask, axis=1), mask.shape, job.gt_mask_png,
                                 job.gt_source or "ground truth", q, job.threshold)
            return outcome, task
        except InputError as exc:
            return str(exc)
        except Exception as exc:
            log.error("storing the result of job %s failed: %s", job.id, type(exc).__name__)
            return f"{job.name}: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ loop
    def _loop(self, body: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                body()
            except Exception:  # never let a stage die: every future is answered in the bodies
                log.exception("worker pipeline stage error")


class MetricPool:
    """Spawned processes for the metrics, started again when one of them dies (the OOM killer, a
    crash in a native library). Which task killed it cannot be told, so the tasks the pool held
    then fail with BrokenProcessPool (their jobs fail with that reason and can be sent again);
    every later task runs in the new processes. Before, one death failed every later job too."""

    def __init__(self, processes: int, nice: int = 0) -> None:
        self.processes, self.nice = processes, nice
        self._lock = threading.Lock()
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_metric_process_start, initargs=(self.nice,))

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        pool = self._pool
        try:
            future = pool.submit(fn, *args)
        except BrokenProcessPool:  # died since the last task: start again, then send this one
            self._restart(pool)
            return self._pool.submit(fn, *args)
        future.add_done_callback(lambda f: self._restart(pool) if _broke(f) else None)
        return future

    def _restart(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._pool is broken:
                log.error("a metric process died; the metrics of the jobs it held fail, new processes start")
                broken.shutdown(wait=False, cancel_futures=True)
                self._pool = self._start()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _broke(future: Future) -> bool:
    return not future.cancelled() and isinstance(future.exception(), BrokenProcessPool)


@dataclass(frozen=True)
class ScoreTask:
    """What a metric process needs for one frame, in its compact forms (the mask as packed bits, the
    ground truth as its PNG, the map as the stored uint16 array), so pickling it costs the worker's
    interpreter lock little."""

    mask_bits: np.ndarray  # np.packbits of the bool mask, rows padded to bytes
    shape: tuple[int, int]
    truth_png: bytes
    truth_source: str
    quantized: np.ndarray | None  # the stored probability map (uint16), for the Dice sweep
    threshold: float


def score_frame(task: ScoreTask) -> tuple[dict[str, Any], bytes | None]:
    """Metrics of one frame and, with a stored map, its Dice at every SWEEP_GRID threshold (float64
    little-endian bytes, as metrics.dice_sweep stores them). Runs in a metric process: decoding the
    ground truth, skeletons, distance maps and the sweep's bincounts all hold an interpreter lock,
    here not the worker's. Raises InputError when the ground truth cannot be read or differs in size."""
    h, w = task.shape
    mask = np.unpackbits(task.mask_bits, axis=1, count=w).astype(bool)
    truth = decode_mask(task.truth_png, task.truth_source, shape=(h, w))
    sweep = None
    if task.quantized is not None:
        sweep = dice_sweep_quantized(task.quantized, truth, task.threshold).astype("<f8").tobytes()
    return compute_metrics(mask, truth), sweep


def default_metric_processes(cores: int) -> int:
    """Three quarters of the cores less one, 1..16: the rest decode, encode and feed the model."""
    return max(1, min(16, cores * 3 // 4 - 1))


def _metric_process_start(nice: int = 0) -> None:
    # a worker killed with SIGKILL takes its metric processes with it (they would idle on, ~80 MB
    # each), and the libraries load now rather than in the first job's metrics
    die_with_parent()
    if nice:
        os.nice(nice)
    from scipy import ndimage  # noqa: F401
    from scipy.spatial import cKDTree  # noqa: F401
    from skimage.morphology import skeletonize  # noqa: F401


def _resolve(futures: list["Future[JobOutcome]"], outcome: JobOutcome) -> None:
    for f in futures:
        f.set_result(outcome)


def _fail(futures: list["Future[JobOutcome]"], exc: BaseException) -> None:
    for f in futures:
        f.set_exception(exc)
