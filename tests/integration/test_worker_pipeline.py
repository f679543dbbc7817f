"""A real worker process on a real Redis, SQLite and PostgreSQL: every job reaches one final state."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import func, select

from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.core.broker import make_celery, publish, queue_names
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.db.models import Job, JobStatus, Metrics, Prediction
from sa2va_queue.db.session import session_scope
from sa2va_queue.producer.dataset import scan_dataset
from sa2va_queue.producer.enqueue import enqueue_frames
from sa2va_queue.report.summarize import build_report

pytestmark = pytest.mark.slow

VESSELNESS = ModelSpec.parse("vesselness")


def _frame_image(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A bright frame with dark vertical and diagonal stripes (vessels) and its mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), bool)
    for col in rng.integers(10, size - 10, 3):
        mask[:, col - 2:col + 2] = True
    yy, xx = np.mgrid[:size, :size]
    mask |= np.abs(yy - xx - rng.integers(-20, 20)) < 2
    image = np.full((size, size), 200.0) - 120.0 * mask + rng.normal(0, 6, (size, size))
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_dataset(root: Path, n_good: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        image, mask = _frame_image(i)
        Image.fromarray(image).save(root / f"P{i}__seq_frame_{i:06d}.png")
        Image.fromarray(mask).save(root / f"P{i}__seq_frame_{i:06d}_mask.png")
    (root / "empty.png").write_bytes(b"")
    good = (root / "P0__seq_frame_000000.png").read_bytes()
    (root / "truncated.png").write_bytes(good[: len(good) // 2])
    image, _ = _frame_image(99)
    Image.fromarray(image).save(root / "wrong_gt.png")
    Image.fromarray(np.ones((50, 50), bool)).save(root / "wrong_gt_mask.png")
    return root


def _wait_final(db_url: str, run_id: int, timeout: float = 120.0) -> dict[str, int]:
    store = JobStore(db_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = store.run_counts(run_id)
        if not counts.get("queued") and not counts.get("running") and not counts.get("pending"):
            return counts
        time.sleep(0.2)
    raise AssertionError(f"jobs not final after {timeout} s: {store.run_counts(run_id)}")


@pytest.fixture
def worker(settings, tmp_path):
    app = make_celery(settings)
    proc = WorkerProcess(settings, str(VESSELNESS), log_path=tmp_path / "worker.log").start(app)
    yield app, proc
    proc.stop()
    app.close()


def _enqueue(settings, frames, run_name="r1", spec=VESSELNESS) -> tuple[int, list[str], str]:
    """Register and send `frames` as a run of `spec`: (run id, job ids, queue)."""
    out = enqueue_frames(settings, frames, model=spec, run_name=run_name, dataset="d")
    return out.run.id, out.job_ids, out.queue


def test_every_job_ends_done_or_failed_with_its_reason(settings, worker, tmp_path):
    found = scan_dataset(make_dataset(tmp_path / "ds"))
    by_name = {f.name: f for f in found.frames}
    # Poison that slipped past validation (say, enqueued by another producer): the worker must
    # fail these alone while the rest of their batch succeeds.
    good = by_name["P1__seq_frame_000001.png"]
    corrupt = dataclasses.replace(good, name="poison_corrupt.png", error=None,
                                  data=good.data[:40] + b"\0" * 200)
    wrong_gt = dataclasses.replace(by_name["wrong_gt.png"], name="poison_wrong_gt.png", error=None,
                                   gt_mask=np.ones((50, 50), bool), gt_mask_png=None,
                                   gt_source="poison_wrong_gt_mask.png")
    run_id, job_ids, _ = _enqueue(settings, [*found.frames, corrupt, wrong_gt])
    assert len(job_ids) == 7  # the 3 frames refused at the scan are stored failed, not sent
    counts = _wait_final(settings.sqlalchemy_url, run_id)
    assert counts == {"done": 5, "failed": 5}, counts

    with session_scope(settings.sqlalchemy_url) as session:
        jobs = {j.name: j for j in session.scalars(select(Job).where(Job.run_id == run_id))}
        assert "empty" in jobs["empty.png"].error and "0 bytes" in jobs["empty.png"].error
        assert "truncated.png" in jobs["truncated.png"].error
        assert "50x50" in jobs["wrong_gt.png"].error
        assert "poison_corrupt.png" in jobs["poison_corrupt.png"].error
        assert "50x50" in jobs["poison_wrong_gt.png"].error and "96x96" in jobs["poison_wrong_gt.png"].error
        done = [j for j in jobs.values() if j.status == JobStatus.done]
        assert all(j.started_at and j.finished_at and j.enqueued_at and j.attempts == 1 for j in done)
        assert session.scalar(select(func.count()).select_from(Prediction)) == 5
        dices = session.scalars(select(Metrics.dice)).all()
        assert len(dices) == 5 and all(0.2 < d < 1.0 for d in dices), dices
        # The report reads the same rows back on this database.
        paths = build_report(session, BlobStore(), "r1", pseudonymizer=Pseudonymizer(b"k" * 32),
                             out_dir=tmp_path / "reports", formats=("json",))
    report = json.loads(paths["json"].read_text())
    assert report["counts"]["by_status"]["failed"] == 5
    assert abs(report["metrics"]["dice"]["mean"] - float(np.mean(dices))) < 1e-9


def test_a_redelivered_job_never_creates_a_second_result(settings, worker, tmp_path):
    app, _ = worker
    found = scan_dataset(make_dataset(tmp_path / "ds", n_good=2))
    frames = [f for f in found.frames if f.error is None and f.gt_mask is not None]
    run_id, job_ids, queue = _enqueue(settings, frames)
    assert _wait_final(settings.sqlalchemy_url, run_id) == {"done": len(job_ids)}
    # The same messages again (what a worker killed between the SQL write and the ack causes):
    # each is answered as already final (the task logs it), stores nothing and counts no attempt.
    publish(app, job_ids, queue)
    log = tmp_path / "worker.log"
    deadline = time.monotonic() + 60
    while log.read_text().count("already final, delivered again") < len(job_ids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert log.read_text().count("already final, delivered again") == len(job_ids)
    with session_scope(settings.sqlalchemy_url) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == len(job_ids)
        assert session.scalar(select(func.count()).select_from(Metrics)) == len(job_ids)
        assert {j.attempts for j in session.scalars(select(Job))} == {1}


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_job_of_another_model_version_is_handed_back_never_run(settings, worker, tmp_path):
    """A noop run's job id published on the vesselness worker's queue: the worker leaves the job
    untouched (no claim, no attempt, no result) and puts its message on the job's own queue."""
    app, proc = worker
    frame = next(f for f in scan_dataset(make_dataset(tmp_path / "ds", n_good=1)).frames if f.error is None)
    noop = enqueue_frames(settings, [frame], model="noop", run_name="other", send=False)
    (job_id,) = noop.job_ids
    store = JobStore(settings.sqlalchemy_url)
    store.mark_sent([job_id])
    _, vesselness_bulk = queue_names(VESSELNESS)
    assert noop.queue != vesselness_bulk
    publish(app, [job_id], vesselness_bulk)
    client = redis.Redis.from_url(settings.broker_url)
    deadline = time.monotonic() + 60
    while client.llen(noop.queue) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    (raw,) = client.lrange(noop.queue, 0, -1)
    assert json.loads(raw)["headers"]["id"] == job_id
    assert client.llen(vesselness_bulk) == 0
    with session_scope(settings.sqlalchemy_url) as session:
        job = session.get(Job, job_id)
        assert job.status == JobStatus.queued and job.attempts == 0 and job.worker is None and job.started_at is None
        assert session.scalar(select(func.count()).select_from(Prediction)) == 0
    assert store.run_counts(noop.run.id) == {"queued": 1}
    assert proc.alive()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_worker_whose_model_cannot_load_exits_non_zero_before_taking_jobs(settings):
    env = {k: v for k, v in settings.to_environ().items()}
    proc = subprocess.run([sys.executable, "-m", "sa2va_queue.cli", "worker", "--model", "vesselness?method=hough"],
                          env={**env, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "hough" in proc.stderr and "Traceback" not in proc.stderr
