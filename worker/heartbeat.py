"""Worker liveness: each worker refreshes a Redis key with a short TTL; a worker whose key has
expired is dead, and the jobs it held as running are orphans the janitor sends again.

A key per worker (not Celery's ping) so that any process — another worker's janitor, `status` —
can tell in one round trip which of the workers named in the jobs table still answer.
"""

from __future__ import annotations

import json
import logging
import threading
from typing import Iterable, Sequence

import redis

log = logging.getLogger(__name__)

PREFIX = "sa2va:alive:"
INTERVAL_S = 5.0
TTL_S = 20  # four missed beats: a worker stalled for 20 s in one GIL-bound call is still alive


def alive(client: redis.Redis, workers: Iterable[str]) -> set[str]:
    names = list(workers)
    if not names:
        return set()
    with client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.exists(PREFIX + name)
        return {name for name, found in zip(names, pipe.execute()) if found}


def announced(client: redis.Redis) -> dict[str, list[str]]:
    """Every live worker and the queues its heartbeat says it consumes (one SCAN and one MGET)."""
    keys = list(client.scan_iter(match=PREFIX + "*", count=1000))
    out: dict[str, list[str]] = {}
    for key, raw in zip(keys, client.mget(keys) if keys else []):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            queues = json.loads(raw).get("queues", [])
        except (ValueError, AttributeError):
            queues = []
        out[key.decode()[len(PREFIX):]] = list(queues)
    return out


def serving(client: redis.Redis, queues: Iterable[str]) -> list[str]:
    """Live workers that consume any of `queues`, from their heartbeat keys."""
    wanted = set(queues)
    return sorted(name for name, consumed in announced(client).items() if wanted & set(consumed))


class Heartbeat(threading.Thread):
    """Refreshes `sa2va:alive:<worker>`; its value lists the queues the worker consumes, so
    producers find the workers of a model version in one round trip (`serving`)."""

    def __init__(self, client: redis.Redis, worker: str, queues: Sequence[str] = (), interval_s: float = INTERVAL_S,
                 ttl_s: int = TTL_S) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.client, self.worker, self.interval_s, self.ttl_s = client, worker, interval_s, ttl_s
        self.value = json.dumps({"queues": list(queues)})
        self._stop_event = threading.Event()

    def beat(self) -> None:
        self.client.set(PREFIX + self.worker, self.value, ex=self.ttl_s)

    def run(self) -> None:
        while True:
            try:
                self.beat()
            except redis.RedisError as exc:  # Redis away: the worker cannot take jobs either
                log.warning("heartbeat failed: %s", exc)
            if self._stop_event.wait(self.interval_s):
                break

    def stop(self) -> None:
        self._stop_event.set()
        try:
            self.client.delete(PREFIX + self.worker)  # a clean stop is known at once
        except redis.RedisError:
            pass
