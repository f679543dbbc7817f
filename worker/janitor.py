"""Re-send jobs whose message the broker lost.

Kombu's Redis transport moves a message from the queue list to its `unacked` hash in two steps; a
Redis that dies between them (even with AOF) loses the message, and a producer that dies between
its SQL commit and its send leaves jobs that were never sent. The database knows every job, so a
job that is still pending/queued, older than a grace period, not in the `unacked` hash, while its
queue list is empty, has no message anywhere: it is sent again. Redelivery is harmless (results
are idempotent), so several workers sweeping at once cost nothing but a duplicate message.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timedelta, timezone

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sa2va_queue.db.models import Job, JobStatus
from sa2va_queue.db.session import get_sessionmaker, session_scope
from sa2va_queue.core.broker import redis_client
from sa2va_queue.core.settings import Settings

log = logging.getLogger(__name__)


def unacked_task_ids(client) -> set[str]:
    ids = set()
    for raw in client.hvals("unacked"):
        try:
            message = json.loads(raw)[0]
            ids.add(message["headers"]["id"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return ids


def lost_jobs(session: Session, client, queues: list[str], grace_s: float) -> list[tuple[str, str]]:
    """(job id, queue) of jobs that have no message in `queues` and should have one."""
    empty = [q for q in queues if client.llen(q) == 0]
    if not empty:
        return []
    cutoff = datetime.now(timezone.utc) - timedelta(seconds=grace_s)
    if session.bind.dialect.name == "sqlite":
        cutoff = cutoff.replace(tzinfo=None)
    stamp = func.coalesce(Job.enqueued_at, Job.created_at)
    rows = session.execute(
        select(Job.id, Job.queue).where(
            Job.queue.in_(empty), Job.status.in_((JobStatus.pending, JobStatus.queued)), stamp <= cutoff
        )
    ).all()
    if not rows:
        return []
    in_flight = unacked_task_ids(client)
    return [(row.id, row.queue) for row in rows if row.id not in in_flight]


def sweep(settings: Settings, app: Celery, queues: list[str], grace_s: float) -> int:
    from sa2va_queue.producer.enqueue import resend

    client = redis_client(settings.broker_url)
    with session_scope(settings.sqlalchemy_url) as session:
        lost = lost_jobs(session, client, queues, grace_s)
    if lost:
        log.warning("re-sending %d job(s) whose message is missing from the broker", len(lost))
    return resend(app, get_sessionmaker(settings.sqlalchemy_url), lost)


class Janitor(threading.Thread):
    """Sweeps every `interval_s` seconds until stopped; errors are logged, never fatal."""

    def __init__(self, settings: Settings, app: Celery, queues: list[str], interval_s: float) -> None:
        super().__init__(name="janitor", daemon=True)
        self.settings, self.app, self.queues, self.interval_s = settings, app, queues, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                sweep(self.settings, self.app, self.queues, grace_s=2 * self.interval_s)
            except Exception:
                log.exception("janitor sweep failed; trying again in %.0f s", self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
