"""`sa2va-queue status`: broker queue depths, job states per run, live workers."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from sqlalchemy import func, select

from sa2va_queue.db.models import DeadLetter, Job, JobStatus, Run
from sa2va_queue.db.session import check_database, session_scope, upgrade_schema
from sa2va_queue.core.broker import check_broker, redis_client
from sa2va_queue.core.broker import BULK_QUEUE, URGENT_QUEUE
from sa2va_queue.core.settings import Settings

STATES = [s.value for s in JobStatus] + ["dead-lettered"]


def job_counts(db_url: str, run_name: str | None = None, limit: int = 20) -> list[tuple[str, dict[str, int]]]:
    """Newest runs first: (run name, {status: count})."""
    with session_scope(db_url) as session:
        runs = select(Run.id, Run.name).order_by(Run.created_at.desc()).limit(limit)
        if run_name is not None:
            runs = select(Run.id, Run.name).where(Run.name == run_name)
        out = []
        for run_id, name in session.execute(runs).all():
            rows = session.execute(select(Job.status, func.count()).where(Job.run_id == run_id).group_by(Job.status))
            counts = {status.value: n for status, n in rows}
            counts["dead-lettered"] = session.scalar(
                select(func.count()).select_from(DeadLetter).join(Job, DeadLetter.job_id == Job.id)
                .where(Job.run_id == run_id, DeadLetter.requeued_at.is_(None))
            )
            out.append((name, counts))
        return out


def queue_depths(broker_url: str, known: set[str] = frozenset()) -> dict[str, int]:
    """Messages waiting in every sa2va queue (the Redis transport keeps each queue as a list, which
    vanishes when empty: `known` queues, such as those workers consume, are listed with 0)."""
    client = redis_client(broker_url)
    depths = {name: 0 for name in known}
    for prefix in (URGENT_QUEUE, BULK_QUEUE):
        for key in client.scan_iter(match=f"{prefix}.*", count=500):
            name = key.decode()
            if client.type(key) == b"list":
                depths[name] = int(client.llen(key))
    return dict(sorted(depths.items()))


def live_workers(settings: Settings) -> dict[str, dict]:
    from sa2va_queue.core.broker import make_celery

    app = make_celery(settings)
    try:
        inspect = app.control.inspect(timeout=1.5)
        active = inspect.active() or {}
        stats = inspect.stats() or {}
        queues = inspect.active_queues() or {}
    finally:
        app.close()
    return {
        name: {
            "active": len(active.get(name, [])),
            "pool": stats.get(name, {}).get("pool", {}),
            "queues": [q["name"] for q in queues.get(name, [])],
        }
        for name in sorted(set(active) | set(stats))
    }


def print_status(settings: Settings, console: Console, run_name: str | None = None) -> None:
    if settings.broker_url is not None:
        check_broker(settings.broker_url)
    check_database(settings.sqlalchemy_url)
    upgrade_schema(settings.sqlalchemy_url)
    table = Table(title="jobs per run")
    table.add_column("run")
    for state in STATES:
        table.add_column(state, justify="right")
    for name, counts in job_counts(settings.sqlalchemy_url, run_name):
        table.add_row(name, *[str(counts.get(s, 0)) for s in STATES])
    console.print(table)
    if settings.is_local:
        console.print("no SA2VA_BROKER_URL: no shared queue or workers to show (`run` starts its own)")
        return
    alive = live_workers(settings)
    served = {q for info in alive.values() for q in info["queues"]}
    queues = Table(title="queues")
    queues.add_column("queue")
    queues.add_column("waiting", justify="right")
    queues.add_column("workers", justify="right")
    for name, depth in queue_depths(settings.broker_url, served).items():
        queues.add_row(name, str(depth), str(sum(name in info["queues"] for info in alive.values())))
    console.print(queues)
    workers = Table(title="workers")
    workers.add_column("worker")
    workers.add_column("jobs in flight", justify="right")
    workers.add_column("threads", justify="right")
    workers.add_column("queues")
    for name, info in alive.items():
        workers.add_row(name, str(info["active"]), str(info["pool"].get("max-concurrency", "?")), ", ".join(info["queues"]))
    console.print(workers)
