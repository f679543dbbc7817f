"""The `segment` Celery task: one task per job, the job id as the task id.

Each task thread claims its job in SQL, decodes and preprocesses the image, waits for its place in
a micro-batch, stores the prediction, then the metrics. A bad input fails its own job (the task
ends FAILURE in Flower with the reason, which is also stored on the job); a database or broker
hiccup retries the task with backoff; redelivery is harmless because every write is idempotent.
A job that uses up its attempts goes to the dead-letter table.
"""

from __future__ import annotations

import logging
from datetime import timezone
from typing import Any

from celery import Celery, Task
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sa2va_queue.db.models import JobStatus
from sa2va_queue.db.session import session_scope
from sa2va_queue.core.exceptions import AttemptsExhausted, InputError, JobFailed, NotFound
from sa2va_queue.core.imaging import decode_image
from sa2va_queue.worker import jobs
from sa2va_queue.core.broker import TASK_NAME
from sa2va_queue.worker.backends.base import SegmentationRequest
from sa2va_queue.worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, PoolTimeout, RedisConnectionError, ConnectionError, TimeoutError)


def process_job(rt: WorkerRuntime, job_id: str, worker_name: str) -> dict[str, Any]:
    """Run one job to its final state. Raises JobFailed (after recording why) for a bad job."""
    failure: str | None = None
    with session_scope(rt.db_url) as session:  # commits the claim (and any failure) before raising
        claimed = jobs.claim(session, job_id, worker_name)
        if claimed is None:
            return {"job_id": job_id, "status": "already_final"}
        try:
            if claimed.attempts > rt.settings.max_attempts:
                raise AttemptsExhausted(
                    f"{claimed.name}: gave up after {claimed.attempts - 1} attempts "
                    "(the worker died or was killed each time); inspect the file, then `sa2va-queue requeue --dead`"
                )
            jobs.check_ground_truth_size(session, rt.blobs, job_id)
            data = rt.blobs.get(session, claimed.image_sha256)
        except AttemptsExhausted as exc:
            failure = str(exc)
            jobs.dead_letter(session, job_id, failure)
        except (InputError, NotFound) as exc:
            failure = str(exc)
            jobs.finish(session, job_id, JobStatus.failed, failure)
    if failure is not None:
        rt.metrics.jobs.labels("failed").inc()
        raise JobFailed(failure)
    if claimed.enqueued_at is not None and claimed.started_at is not None:
        wait = _aware(claimed.started_at) - _aware(claimed.enqueued_at)
        rt.metrics.queue_wait.observe(max(0.0, wait.total_seconds()))
    try:
        image = decode_image(data, claimed.name)
        future, preprocess_ms = rt.submit(SegmentationRequest(job_id, image, claimed.prompt))
        result, info = future.result()
        with session_scope(rt.db_url) as session:  # one transaction: prediction, metrics, final state
            jobs.store_prediction(
                session,
                rt.blobs,
                job_id,
                result,
                version_id=rt.version_id,
                threshold=rt.threshold,
                batch_size=int(info["batch_size"]),
                preprocess_ms=preprocess_ms,
                compute_ms=info["compute_ms"],
                store_probability=rt.settings.store_probabilities,
            )
            metrics = jobs.store_metrics(session, rt.blobs, job_id)
            status = JobStatus.no_segmentation if result.no_segmentation else JobStatus.done
            jobs.finish(session, job_id, status)
    except TRANSIENT:
        raise
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        _record_failure(rt, job_id, f"{claimed.name}: database error: {exc.orig}")
    except (InputError, NotFound) as exc:
        _record_failure(rt, job_id, str(exc))
    except Exception as exc:  # a model bug fails this job with its reason; the worker goes on
        log.exception("job %s failed", job_id)
        _record_failure(rt, job_id, f"{claimed.name}: {type(exc).__name__}: {exc}")
    rt.metrics.jobs.labels(status.value).inc()
    out: dict[str, Any] = {"job_id": job_id, "status": status.value, "batch_size": int(info["batch_size"])}
    if metrics is not None:
        out["dice"] = metrics.dice
    return out


def _record_failure(rt: WorkerRuntime, job_id: str, reason: str) -> None:
    """Store why the job failed, then fail the Celery task too (Flower shows FAILURE + reason)."""
    with session_scope(rt.db_url) as session:
        jobs.finish(session, job_id, JobStatus.failed, reason)
    rt.metrics.jobs.labels("failed").inc()
    raise JobFailed(reason)


def _aware(value):
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def register(app: Celery, rt: WorkerRuntime) -> Task:
    """Bind the segment task to `app`, serving `rt`'s model."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def segment(self: Task, job_id: str) -> dict[str, Any]:
        try:
            return process_job(rt, job_id, self.request.hostname or "worker")
        except TRANSIENT as exc:
            if self.request.retries + 1 >= rt.settings.max_attempts:
                reason = f"transient error persisted over {rt.settings.max_attempts} attempts: {type(exc).__name__}: {exc}"
                _try_dead_letter(rt, job_id, reason)
                raise JobFailed(reason) from exc
            countdown = min(30.0, 2.0 ** self.request.retries)
            log.warning("job %s: transient error (%s); retry in %.0f s", job_id, exc, countdown)
            raise self.retry(exc=exc, countdown=countdown, max_retries=rt.settings.max_attempts)

    return segment


def _try_dead_letter(rt: WorkerRuntime, job_id: str, reason: str) -> None:
    try:
        with session_scope(rt.db_url) as session:
            jobs.dead_letter(session, job_id, reason)
        rt.metrics.jobs.labels("failed").inc()
    except Exception:  # the database may still be down: the job stays non-final; `requeue --stale` finds it
        log.exception("job %s: could not record the dead letter", job_id)
