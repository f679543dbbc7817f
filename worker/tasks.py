"""The `segment` Celery task: one task per job, the job id as the task id.

The task thread hands its job id to the worker's pipeline and waits: the pipeline claims, runs and
stores jobs a batch at a time (worker/pipeline.py). A bad input fails its own job (FAILURE in
Flower with the reason, also stored on the job). A database or broker hiccup retries the task with
backoff; the attempts that count are the claims in SQL (db/jobstore.py), so Celery's own retry
count is not a second limit. A job of another model version is handed back to its own queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from sa2va_queue.core.broker import TASK_NAME, publish
from sa2va_queue.core.exceptions import JobFailed
from sa2va_queue.worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

TRANSIENT = (OperationalError, PoolTimeout, RedisConnectionError, ConnectionError, TimeoutError)


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, TRANSIENT) or (isinstance(exc, DBAPIError) and bool(exc.connection_invalidated))


def register(app: Celery, rt: WorkerRuntime) -> Task:
    """Bind the segment task to `app`, serving `rt`'s model. Delivery settings: core/broker.py."""

    @app.task(name=TASK_NAME, bind=True)
    def segment(self: Task, job_id: str, **_shown: Any) -> dict[str, Any]:
        # keyword arguments (run, frame, model) are there for Flower; the job row is the truth
        try:
            with rt.metrics.in_flight.track_inprogress():
                outcome = rt.pipeline.submit(job_id).result()
        except Exception as exc:
            if not _transient(exc):
                if isinstance(exc, JobFailed):
                    rt.metrics.jobs.labels("failed").inc()
                raise
            countdown = min(30.0, 2.0 ** self.request.retries)
            log.warning("job %s: transient error (%s); retry in %.0f s", job_id, type(exc).__name__, countdown)
            raise self.retry(exc=exc, countdown=countdown, max_retries=None)
        if outcome.status == "handed_back" and outcome.queue:
            log.warning("job %s belongs to another model version; handed back to %s", job_id, outcome.queue)
            publish(app, [job_id], outcome.queue, labels={job_id: {k: str(v) for k, v in _shown.items()}})
        if outcome.status == "already_final":  # a redelivery (a worker lost before its ack): nothing stored
            log.info("job %s: already final, delivered again; nothing stored", job_id)
        if outcome.status not in ("already_final", "handed_back"):
            rt.metrics.jobs.labels(outcome.status).inc()
        return outcome.as_dict()

    return segment
