"""`sa2va-queue monitor` runs Flower with basic auth, and Flower sees every job as its own task:
received, started, then SUCCESS or FAILURE with the reason (per-job task events)."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.core.broker import make_celery
from sa2va_queue.producer.dataset import scan_dataset
from tests.integration.test_worker_pipeline import _enqueue, _wait_final, make_dataset

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, auth: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_flower_shows_each_job_with_its_final_state(settings, tmp_path):
    port = _free_port()
    env = {**os.environ, **settings.to_environ(), "SA2VA_FLOWER_PASSWORD": "s3cret", "SA2VA_FLOWER_PORT": str(port)}
    flower = subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "monitor"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app = make_celery(settings)
    worker = WorkerProcess(settings, "vesselness", log_path=tmp_path / "w.log").start(app)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if _get(base + "/", None)[0] in (200, 401):
                break
            time.sleep(0.2)
        assert _get(base + "/api/tasks", None)[0] == 401  # never without the password
        found = scan_dataset(make_dataset(tmp_path / "ds", n_good=2))
        good = found.frames[0]
        poison = dataclasses.replace(good, name="poison.png", data=good.data[:60] + b"\0" * 100, error=None)
        run_id, job_ids, _ = _enqueue(settings, [*found.frames, poison])
        _wait_final(settings.sqlalchemy_url, run_id)
        states = {}
        for _ in range(50):
            status, body = _get(base + "/api/tasks", "admin:s3cret")
            assert status == 200
            tasks = json.loads(body)
            states = {task_id: info.get("state") for task_id, info in tasks.items()}
            if all(states.get(j) in ("SUCCESS", "FAILURE") for j in job_ids):
                break
            time.sleep(0.2)
        assert {states[j] for j in job_ids} <= {"SUCCESS", "FAILURE"}, states
        assert list(states.values()).count("SUCCESS") == 2
        assert states[job_ids[-1]] == "FAILURE" and "poison.png" in tasks[job_ids[-1]]["exception"]
    finally:
        worker.stop()
        app.close()
        flower.terminate()
        flower.wait(20)
