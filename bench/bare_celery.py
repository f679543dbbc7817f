"""The baseline of bench/queue_overhead.py: a bare Celery app, same pool, concurrency, acks_late,
prefetch and Redis as the project's worker, with a task that does nothing but count itself.

    python bench/bare_celery.py REDIS_URL CONCURRENCY     (runs the worker)
"""

from __future__ import annotations

import sys

import redis
from celery import Celery

COUNTER = "bench:bare:done"


def make_app(url: str) -> Celery:
    app = Celery("bare", broker=url, set_as_current=False)
    app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                    task_ignore_result=True, worker_send_task_events=True, task_send_sent_event=True,
                    worker_hijack_root_logger=False, broker_connection_retry_on_startup=True)
    client = redis.Redis.from_url(url)

    @app.task(name="bare.noop")
    def noop(job_id: str) -> None:
        client.incr(COUNTER)

    return app


if __name__ == "__main__":
    url, threads = sys.argv[1], int(sys.argv[2])
    make_app(url).worker_main(["worker", "--pool=threads", f"--concurrency={threads}", "-Q", "bare",
                               "-E", "-n", "bare@bench", "--loglevel=WARNING", "--without-gossip",
                               "--without-mingle"])
