"""A worker's Prometheus endpoint counts its jobs and batches; urgent jobs are served before bulk."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest
from sqlalchemy import select

from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.core.broker import make_celery
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.db.models import Job
from sa2va_queue.db.session import session_scope
from sa2va_queue.producer.enqueue import enqueue_frames
from tests.integration.test_faults import done_count, frames, wait_until

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_metrics_endpoint_and_urgent_before_bulk(settings, tmp_path):
    spec = ModelSpec.parse("noop?delay_ms=30")
    items = frames(31)
    bulk = enqueue_frames(settings, items[:30], model=spec, run_name="m")  # the bulk backlog is there first
    urgent = enqueue_frames(settings, items[30:], model=spec, run_name="m", urgent=True)
    assert bulk.run.id == urgent.run.id and bulk.queue != urgent.queue
    run_id, urgent_ids = bulk.run.id, urgent.job_ids
    app = make_celery(settings)
    port = _free_port()
    worker = WorkerProcess(settings.with_(metrics_port=port, max_batch_size=1, log_format="json"), str(spec),
                           log_path=tmp_path / "w.log", extra_args=["--concurrency", "1"]).start(app)
    try:
        wait_until(lambda: done_count(settings.sqlalchemy_url, run_id) == 31, 120, "31 jobs done")
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        worker.stop()
        app.close()
    assert 'sa2va_jobs_total{status="done"} 31.0' in text
    assert "sa2va_batch_size_count 31.0" in text and "sa2va_queue_wait_seconds_count 31.0" in text
    assert "sa2va_end_to_end_seconds_count 31.0" in text and "sa2va_jobs_in_flight 0.0" in text
    assert "process_cpu_seconds_total" in text and "python_info{" in text
    assert f'key="{spec.key}"' in text and 'device="cpu"' in text  # sa2va_model_info
    lines = [json.loads(line) for line in (tmp_path / "w.log").read_text().splitlines() if line.startswith("{")]
    ready = [r for r in lines if r.get("model_key") == spec.key]
    assert ready and ready[0]["device"] == "cpu" and ready[0]["device_map"] == "cpu"
    assert any(r["logger"].startswith("celery") for r in lines)  # Celery's lines go through the same handler
    with session_scope(settings.sqlalchemy_url) as session:
        order = [j.id for j in session.scalars(select(Job).where(Job.run_id == run_id).order_by(Job.started_at))]
    assert order.index(urgent_ids[0]) < 5, "the urgent job waited behind the bulk backlog"
