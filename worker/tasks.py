"""The `segment` Celery task: one task per job, the job id as the task id.

Each task thread claims its job in SQL, decodes and preprocesses the image, waits for its place in
a micro-batch, stores the prediction, then the metrics. A bad input fails its own job (the task
ends FAILURE in Flower with the reason, which is also stored on the job); a database or broker
hiccup retries the task with backoff; redelivery is harmless because every write is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError

from db.models import JobStatus
from db.session import session_scope
from sa2va_queue.exceptions import InputError, JobFailed, NotFound
from sa2va_queue.imaging import decode_image
from worker import jobs
from worker.app import TASK_NAME
from worker.backends.base import SegmentationRequest
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, RedisConnectionError, ConnectionError, TimeoutError)


def process_job(rt: WorkerRuntime, job_id: str, worker_name: str) -> dict[str, Any]:
    """Run one job to its final state. Raises JobFailed (after recording why) for a bad job."""
    failure: str | None = None
    with session_scope(rt.db_url) as session:  # commits the claim (and any failure) before raising
        claimed = jobs.claim(session, job_id, worker_name)
        if claimed is None:
            return {"job_id": job_id, "status": "already_final"}
        try:
            if claimed.attempts > rt.settings.max_attempts:
                raise InputError(
                    f"{claimed.name}: gave up after {claimed.attempts - 1} attempts "
                    "(the worker died or was killed each time); inspect the file and requeue it"
                )
            jobs.check_ground_truth_size(session, rt.blobs, job_id)
            data = rt.blobs.get(session, claimed.image_sha256)
        except (InputError, NotFound) as exc:
            failure = str(exc)
            jobs.finish(session, job_id, JobStatus.failed, failure)
    if failure is not None:
        raise JobFailed(failure)
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
    out: dict[str, Any] = {"job_id": job_id, "status": status.value, "batch_size": int(info["batch_size"])}
    if metrics is not None:
        out["dice"] = metrics.dice
    return out


def _record_failure(rt: WorkerRuntime, job_id: str, reason: str) -> None:
    """Store why the job failed, then fail the Celery task too (Flower shows FAILURE + reason)."""
    with session_scope(rt.db_url) as session:
        jobs.finish(session, job_id, JobStatus.failed, reason)
    raise JobFailed(reason)


def register(app: Celery, rt: WorkerRuntime) -> Task:
    """Bind the segment task to `app`, serving `rt`'s model."""

    @app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True)
    def segment(self: Task, job_id: str) -> dict[str, Any]:
        try:
            return process_job(rt, job_id, self.request.hostname or "worker")
        except TRANSIENT as exc:
            if self.request.retries + 1 >= rt.settings.max_attempts:
                log.error("job %s: transient error persisted over %d attempts: %s", job_id, rt.settings.max_attempts, exc)
                raise
            countdown = min(60.0, 2.0 ** self.request.retries)
            log.warning("job %s: transient error (%s); retry in %.0f s", job_id, exc, countdown)
            raise self.retry(exc=exc, countdown=countdown, max_retries=rt.settings.max_attempts)

    return segment
