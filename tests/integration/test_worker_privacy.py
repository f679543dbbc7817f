"""A job that fails in the worker: the reason is stored, and the worker's log and Flower's view
(the Celery exception) show the frame name pseudonymised, never the patient id."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.core.broker import make_celery
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.producer.enqueue import enqueue_frames
from sa2va_queue.producer.frame import Frame
from tests.helpers import png_bytes

PATIENT = "Zhao_Lei_0000412233"


def test_a_failed_job_keeps_the_patient_id_out_of_the_worker_log(settings, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    settings = settings.with_(blob_dir=blobs)
    name = f"{PATIENT}__1-4_1_04B2D3CF_frame_000034.png"
    data = png_bytes(np.random.default_rng(0).integers(0, 255, (16, 16), dtype=np.uint8))
    frame = Frame(name=name, path=Path(name), data=data, width=16, height=16, mode="L", media_type="image/png",
                  gt_mask=None, gt_source=None, error=None)
    done = enqueue_frames(settings, [frame], model="noop", run_name="privacy", send=False)
    for path in blobs.rglob("*"):
        if path.is_file():
            path.write_bytes(b"tampered")  # the worker finds the image corrupted: a worker-side failure
    store = JobStore(settings.sqlalchemy_url)
    app = make_celery(settings)
    log = tmp_path / "worker.log"
    worker = WorkerProcess(settings, "noop", log_path=log).start(app)
    try:
        from sa2va_queue.core.broker import publish

        store.mark_sent(done.job_ids)
        publish(app, done.job_ids, done.queue)
        deadline = time.monotonic() + 60
        while store.run_counts(done.run.id) != {"failed": 1} and time.monotonic() < deadline:
            time.sleep(0.2)
        assert store.run_counts(done.run.id) == {"failed": 1}
        time.sleep(0.5)  # the task's failure line follows the SQL write
    finally:
        worker.stop()
        app.close()
    text = log.read_text()
    assert "corrupted" in text  # the failure is logged ...
    assert PATIENT not in text  # ... with the frame name pseudonymised
