"""The Celery app both sides build, queue and task names, and a Redis client.

Delivery settings live here and nowhere else: late acknowledgement, reject on worker loss,
prefetch 1, the visibility timeout. Producers and workers call `make_celery(settings)`.
There is no result backend: job results live in SQL and Flower works from task events.
"""

from __future__ import annotations

from typing import Mapping, Sequence
from urllib.parse import urlsplit

import redis
from celery import Celery
from kombu import Queue

from sa2va_queue.core import kombu_redis
from sa2va_queue.core.exceptions import ServiceUnavailable
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.settings import Settings, redact_url

kombu_redis.install()  # every Celery app of ours, producer and worker: see core/kombu_redis.py

TASK_NAME = "sa2va.segment"
URGENT_QUEUE = "sa2va.urgent"
BULK_QUEUE = "sa2va.bulk"
PUBLISH_BATCH = 512  # Redis commands per pipeline (a message and its event are two)


def queue_names(spec: ModelSpec) -> tuple[str, str]:
    """(urgent, bulk) queues of the workers that serve exactly this model version."""
    return f"{URGENT_QUEUE}.{spec.key}", f"{BULK_QUEUE}.{spec.key}"


def worker_queues(spec: ModelSpec) -> list[Queue]:
    return [Queue(name) for name in queue_names(spec)]


def make_celery(settings: Settings) -> Celery:
    url = settings.broker_url
    app = Celery("sa2va_queue", broker=url, set_as_current=False)
    # A message reserved by a worker that died comes back after the visibility timeout; sweep for
    # such messages a few times per timeout so a short timeout (tests) recovers quickly too.
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
        # "priority": the Redis transport polls queues in the order given (urgent first).
        "queue_order_strategy": "priority",
    }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # At-least-once: a job is acked only after its result is in SQL; a worker lost mid-batch
        # puts it back. Results are idempotent in SQL, so a redelivery never doubles a row.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
        worker_disable_rate_limits=True,  # no rate limits are set: skip the per-task bucket check
        worker_hijack_root_logger=False,
        broker_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=f"{BULK_QUEUE}.default",
    )
    return app


def publish(app: Celery, job_ids: Sequence[str], queue: str,
            labels: Mapping[str, Mapping[str, str]] | None = None) -> int:
    """One message per job (task id = job id) on one connection. `labels[job_id]` (run, frame,
    model) travel as keyword arguments so Flower shows them; the worker reads only the id.

    The messages and their `task-sent` events go out in Redis pipelines (kombu's `Producer.batch`):
    one round trip per `PUBLISH_BATCH` commands instead of two per job, a third of the producer's
    time per job. A pipeline that fails part-way raises; the caller re-sends the chunk (the job
    rows are the truth, a duplicate message is answered `already_final`)."""
    labels = labels or {}
    with app.producer_or_acquire() as producer, producer.batch(max_size=PUBLISH_BATCH):
        for job_id in job_ids:
            app.send_task(TASK_NAME, args=[job_id], kwargs=dict(labels.get(job_id, {})), task_id=job_id,
                          queue=queue, producer=producer)
    return len(job_ids)


def redis_client(url: str) -> redis.Redis:
    if url.startswith("redis+socket://") or url.startswith("unix://"):
        return redis.Redis(unix_socket_path=urlsplit(url).path, socket_connect_timeout=3)
    return redis.Redis.from_url(url, socket_connect_timeout=3)


def check_broker(url: str) -> None:
    """One-line ServiceUnavailable naming SA2VA_BROKER_URL when Redis does not answer."""
    try:
        redis_client(url).ping()
    except redis.RedisError as exc:
        raise ServiceUnavailable(
            f"Redis at SA2VA_BROKER_URL={redact_url(url)} is unreachable ({exc}); start it or fix the URL"
        ) from None
