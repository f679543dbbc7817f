"""A worker's Prometheus endpoint counts its jobs and batches; urgent jobs are served before bulk."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from sqlalchemy import select

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import Job
from sa2va_queue.db.session import get_sessionmaker, session_scope
from sa2va_queue.producer import enqueue
from sa2va_queue.cli.local_worker import WorkerProcess
from tests.integration.test_faults import done_count, frames, wait_until
from sa2va_queue.core.broker import make_celery, queue_names

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_endpoint_and_urgent_before_bulk(settings, tmp_path):
    urgent, bulk = queue_names("noop")
    with session_scope(settings.sqlalchemy_url) as session:
        run = enqueue.get_or_create_run(session, name="m", model_spec="noop", dataset="d", prompt="p",
                                        threshold=0.5, split=None)
        items = frames(31)
        bulk_ids = enqueue.register_frames(session, BlobStore(), run, items[:30], queue=bulk, prompt="p").new_job_ids
        urgent_ids = enqueue.register_frames(session, BlobStore(), run, items[30:], queue=urgent, prompt="p").new_job_ids
        run_id = run.id
    app = make_celery(settings)
    factory = get_sessionmaker(settings.sqlalchemy_url)
    enqueue.send_jobs(app, factory, bulk_ids, bulk)  # the bulk backlog is there first
    enqueue.send_jobs(app, factory, urgent_ids, urgent)
    port = _free_port()
    worker = WorkerProcess(settings.with_(metrics_port=port, max_batch_size=1), "noop?delay_ms=30", tag="noop",
                           log_path=tmp_path / "w.log", extra_args=["--concurrency", "1"]).start(app)
    try:
        wait_until(lambda: done_count(settings.sqlalchemy_url, run_id) == 31, 120, "31 jobs done")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        worker.stop()
        app.close()
    assert 'sa2va_jobs_total{status="done"} 31.0' in text
    assert "sa2va_batch_size_count 31.0" in text and "sa2va_queue_wait_seconds_count 31.0" in text
    with session_scope(settings.sqlalchemy_url) as session:
        order = [j.id for j in session.scalars(select(Job).where(Job.run_id == run_id).order_by(Job.started_at))]
    assert order.index(urgent_ids[0]) < 5, "the urgent job waited behind the bulk backlog"
