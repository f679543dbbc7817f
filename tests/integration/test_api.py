"""The Python API end to end on a private stack (Client.local: private Redis, SQLite, one real
worker process): folders and arrays in, masks out as arrays, failures named, report written."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sa2va_queue.api import Client, Enqueued
from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.core.broker import make_celery
from sa2va_queue.core.exceptions import ConfigError, InputError, WaitTimeout
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.core.settings import Settings
from sa2va_queue.producer.synth import generate

pytestmark = pytest.mark.slow


def test_client_needs_a_broker_or_a_local_stack(tmp_path):
    with pytest.raises(ConfigError, match="SA2VA_BROKER_URL"):
        Client(Settings.load(environ={}, data_dir=tmp_path))


def test_enqueue_wait_masks_report_through_a_private_stack(tmp_path):
    frames = tmp_path / "frames"
    generate(frames, n=2, seed=7)
    (frames / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    rng = np.random.default_rng(0)
    grey8 = rng.integers(0, 255, (96, 128), dtype=np.uint8)
    grey16 = rng.integers(0, 65535, (64, 80), dtype=np.uint16)
    settings = Settings.load(environ={}, data_dir=tmp_path / "work")
    with Client.local(settings, model="vesselness") as client:
        with pytest.raises(InputError, match="not an image"):
            client.enqueue([np.zeros((4, 4), np.float64)], run="bad")
        job = client.enqueue([frames, grey8, grey16], run="api-run")
        assert isinstance(job, Enqueued) and job.run == "api-run"
        assert job.sent == 4 and job.failed_at_validation == 1, job  # 2 frames + 2 arrays; the broken file
        counts = client.wait(job, timeout=600)
        assert counts == {"done": 4, "failed": 1}, counts
        again = client.enqueue([frames], run="api-run")  # same names: nothing new
        assert again.sent == 0 and again.skipped_existing == 3

        masks = client.masks("api-run")
        assert set(masks) == {*(p.name for p in frames.glob("*.jpg") if p.name != "broken.jpg"),
                              "array-00001.png", "array-00002.png"}
        assert masks["array-00001.png"].shape == grey8.shape and masks["array-00002.png"].shape == grey16.shape
        for name, mask in masks.items():
            assert mask.dtype == bool
            if name.startswith("SYN"):  # vesselness finds the synthetic vessels: an independent check
                truth = np.array(Image.open(frames / name.replace(".jpg", "_mask.png"))) > 0
                assert compute_metrics(mask, truth)["dice"] > 0.4
        assert set(client.probabilities(job)) == set(masks)
        assert list(client.failures(job)) == ["broken.jpg"]

        paths = client.report(job, out_dir=tmp_path / "reports", formats=["html", "json"])
        assert paths["html"].exists() and "data:image/png;base64" in paths["html"].read_text()


def test_client_on_a_deployment_waits_for_running_workers(redis_url, tmp_path):
    """Client(settings): the deployment's Redis and database, a worker started apart from it."""
    settings = Settings.load(environ={}, data_dir=tmp_path / "work", broker_url=redis_url,
                             database_url=f"sqlite:///{tmp_path / 'jobs.sqlite'}")
    client = Client(settings)  # migrates the database
    image = np.full((80, 80), 200, np.uint8)
    image[:, 38:42] = 60  # one dark vessel
    nobody = client.enqueue({"lonely.png": image}, model="noop", run="no-worker")
    with pytest.raises(WaitTimeout, match="no-worker"):  # no worker serves noop: a one-line timeout
        client.wait(nobody, timeout=1)
    app = make_celery(settings)
    worker = WorkerProcess(settings, "vesselness", log_path=tmp_path / "worker.log").start(app)
    try:
        job = client.enqueue({"vessel.png": image}, model="vesselness", run="deployed")
        assert client.wait(job, timeout=120) == {"done": 1}
        mask = client.masks(job)["vessel.png"]
        assert mask.shape == image.shape and mask[:, 38:42].mean() > mask[:, :30].mean()
    finally:
        worker.stop()
        app.close()
