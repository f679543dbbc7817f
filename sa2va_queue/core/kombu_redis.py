"""One Redis client per kombu channel for its short commands, instead of one per command.

kombu's Redis channel builds a new `redis.Redis` object for every acknowledgement, every event it
publishes and every message it sends (`Channel.conn_or_acquire`). Each construction copies redis-py's
table of about 200 response callbacks: about 60 µs, several times per job, in the worker's one
consumer thread. Measured on the 2-core VM (bench/queue_overhead.py's worker alone, 2000 no-op
jobs, four A/B pairs): 3.6 → 3.0 ms of worker CPU per job.

The client object is thread-safe (each command takes a connection from the channel's pool), so
one per channel is enough; when kombu replaces the channel's pool (after a connection error) the
client is built again on it. Installed by `install()`, which core/broker.py calls on import:
kombu's Redis transport then creates this channel class (`Transport.Channel` is the hook kombu's
transports use to name their channel).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from kombu.transport import redis as kombu_redis


class ReusingChannel(kombu_redis.Channel):
    _sync_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        cached = self._sync_client
        if cached is None or cached.connection_pool is not self.pool:
            cached = self._sync_client = self._create_client()
        yield cached


def install() -> None:
    if kombu_redis.Transport.Channel is kombu_redis.Channel:
        kombu_redis.Transport.Channel = ReusingChannel
