"""The Celery application: Redis broker, late acks, per-job task events for Flower.

Producers and workers each build it from the one Settings object with `make_celery(settings)`;
workers then register the task with `worker.tasks.register(app, runtime)`.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from sa2va_queue.settings import BULK_QUEUE, URGENT_QUEUE, Settings

TASK_NAME = "sa2va.segment"


def queue_names(tag: str) -> tuple[str, str]:
    """(urgent, bulk) queues of the workers that serve model `tag` (the model's name)."""
    return f"{URGENT_QUEUE}.{tag}", f"{BULK_QUEUE}.{tag}"


def make_celery(settings: Settings) -> Celery:
    url = settings.broker_url
    app = Celery("sa2va_queue", broker=url, backend=url, set_as_current=False)
    # A message reserved by a worker that died comes back after the visibility timeout; sweep for
    # such messages a few times per timeout so a short timeout (tests) recovers quickly too.
    transport = {
        "visibility_timeout": settings.visibility_timeout_s,
        "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
        "unacked_restore_throttle": 1,
    }
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_expires=7 * 24 * 3600,
        # At-least-once: a job is acked only after its result is in SQL; a worker lost mid-batch
        # puts it back. Results are idempotent in SQL, so a redelivery never doubles a row.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        # "priority": the Redis transport polls queues in the order given (urgent first) instead
        # of round-robin, so a worker serves urgent work before bulk evaluation.
        broker_transport_options={**transport, "queue_order_strategy": "priority"},
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_default_queue=queue_names("default")[1],
    )
    return app


def worker_queues(tag: str) -> list[Queue]:
    return [Queue(name) for name in queue_names(tag)]
