"""Re-send jobs that have no live message: lost by the broker, or held by a dead worker.

Lost messages. Kombu's Redis transport moves a message from the queue list to its `unacked` hash in
two steps; a Redis that dies between them (even with AOF) loses it, and a producer that dies
between its SQL commit and its send leaves jobs never sent. A job still pending/queued, stale for
a grace period (db/jobstore.py: the one definition of stale), not in the `unacked` hash, while its
queue list is empty, has no message anywhere: it is sent again.

Abandoned reservations. A worker killed between reserving a message and claiming its job leaves
the job queued in SQL with its message in `unacked` for the whole visibility timeout (an hour by
default). A live worker claims what it reserves at once (a retry waits at most 30 s, worker/tasks.py),
so a stale queued job whose every reservation is older than RESERVATION_MAX_AGE_S counts as lost
(checked, like lost messages, once its queue list is empty): its reservations are dropped and it is
sent again.

Orphans. A job running on a worker whose heartbeat key expired (worker/heartbeat.py) is sent again
at once, and the dead worker's reserved copy is removed from the `unacked` hash so that the
visibility timeout does not deliver it a second time. Redelivery is harmless anyway (results are
idempotent), so several janitors sweeping at once cost nothing but a duplicate message.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Sequence

import redis
from celery import Celery

from sa2va_queue.core.broker import publish
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.db.models import JobStatus
from sa2va_queue.worker.heartbeat import alive

log = logging.getLogger(__name__)

UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
RESERVATION_MAX_AGE_S = 60.0  # above the longest retry countdown (30 s) a live worker holds a message


def unacked_entries(client: redis.Redis) -> dict[str, list[bytes]]:
    """Task id -> delivery tags of the messages reserved by some worker and not yet acked."""
    out: dict[str, list[bytes]] = {}
    for tag, raw in client.hgetall(UNACKED).items():
        try:
            out.setdefault(json.loads(raw)[0]["headers"]["id"], []).append(tag)
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return out


def resend(store: JobStore, app: Celery, targets: Sequence[tuple[str, str]]) -> int:
    """Reset (job id, queue) pairs to pending, mark them sent and send them, grouped by queue."""
    if not targets:
        return 0
    ids = [job_id for job_id, _ in targets]
    store.reset(ids)
    store.mark_sent(ids)
    by_queue: dict[str, list[str]] = {}
    for job_id, queue in targets:
        by_queue.setdefault(queue, []).append(job_id)
    return sum(publish(app, chunk, queue) for queue, chunk in by_queue.items())


def sweep(store: JobStore, client: redis.Redis, app: Celery, queues: Sequence[str], grace_s: float) -> int:
    """One pass: orphans of dead workers, then lost messages of `queues`. Returns jobs re-sent."""
    sent = 0
    running = store.running_workers()
    dead = [w for w in running if w not in alive(client, running)]
    if dead:
        orphans = store.orphaned(dead)
        unacked = unacked_entries(client)
        tags = [tag for job_id, _ in orphans for tag in unacked.get(job_id, [])]
        if tags:
            client.hdel(UNACKED, *tags)
            client.zrem(UNACKED_INDEX, *tags)
        log.warning("worker(s) %s stopped answering; re-sending their %d job(s)", ", ".join(dead), len(orphans))
        sent += resend(store, app, orphans)
    empty = {q for q in queues if client.llen(q) == 0}
    if empty:
        stale = [(i, q) for i, q in store.stale(grace_s, statuses=(JobStatus.pending, JobStatus.queued)) if q in empty]
        if stale:
            in_flight = unacked_entries(client)
            # index scores are reservation times (kombu's Redis QoS): old ones have no live holder
            old = set(client.zrangebyscore(UNACKED_INDEX, "-inf", time.time() - RESERVATION_MAX_AGE_S))
            lost = [(i, q) for i, q in stale if not set(in_flight.get(i, ())) - old]
            abandoned = [tag for i, _ in lost for tag in in_flight.get(i, ())]
            if abandoned:
                client.hdel(UNACKED, *abandoned)
                client.zrem(UNACKED_INDEX, *abandoned)
            if lost:
                log.warning("re-sending %d job(s) whose message is missing from the broker", len(lost))
                sent += resend(store, app, lost)
    return sent


class Janitor(threading.Thread):
    """Sweeps every `interval_s` seconds until stopped; errors are logged, never fatal."""

    def __init__(self, store: JobStore, client: redis.Redis, app: Celery, queues: Sequence[str],
                 interval_s: float) -> None:
        super().__init__(name="janitor", daemon=True)
        self.store, self.client, self.app, self.queues, self.interval_s = store, client, app, queues, interval_s
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            try:
                sweep(self.store, self.client, self.app, self.queues, grace_s=2 * self.interval_s)
            except Exception:
                log.exception("janitor sweep failed; trying again in %.0f s", self.interval_s)

    def stop(self) -> None:
        self._stop_event.set()
