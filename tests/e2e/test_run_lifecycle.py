"""`run` interrupted and resumed, and `run` whose private Redis dies: real processes, no mocks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError

from sa2va_queue.db.models import Prediction

pytestmark = pytest.mark.slow

SLOW = "noop?delay_ms=400"


def _frames(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)).save(root / f"f{i:03d}.png")
    return root


def _start_run(frames: Path, data: Path, name: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")}
    env.update(SA2VA_MAX_BATCH_SIZE="2", SA2VA_MAX_QUEUE_DELAY_MS="0")
    return subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "--data-dir", str(data), "run", str(frames),
                             "--model", SLOW, "--run-name", name, "--format", "json"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _counts(data: Path) -> dict[str, int]:
    engine = create_engine(f"sqlite:///{data / 'sa2va-queue.sqlite'}")
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT status, count(*) FROM jobs GROUP BY status")).all()
            return {status: n for status, n in rows} | {
                "predictions": conn.scalar(select(func.count()).select_from(Prediction))}
    except OperationalError:  # the run has not created its schema yet
        return {}
    finally:
        engine.dispose()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_rerun_after_ctrl_c_resumes_at_once_and_finishes_every_frame_once(tmp_path: Path) -> None:
    frames, data = _frames(tmp_path / "frames", 24), tmp_path / "work"
    first = _start_run(frames, data, "resume")
    _wait_for(lambda: (data / "sa2va-queue.sqlite").exists() and _counts(data).get("done", 0) >= 2, 120,
              "the first jobs to finish")
    first.send_signal(signal.SIGINT)
    first.wait(60)
    assert first.returncode != 0
    before = _counts(data)
    assert before.get("done", 0) < 24, before
    second = _start_run(frames, data, "resume")
    out, err = second.communicate(timeout=180)
    assert second.returncode == 0, out + err
    assert "unfinished job(s) sent again" in out
    after = _counts(data)
    assert after == {"done": 24, "predictions": 24}, after


def test_a_dead_private_redis_ends_the_run_with_one_line(tmp_path: Path) -> None:
    frames, data = _frames(tmp_path / "frames", 40), tmp_path / "work"
    run = _start_run(frames, data, "redis-dies")
    _wait_for(lambda: (data / "sa2va-queue.sqlite").exists() and _counts(data).get("done", 0) >= 1, 120,
              "the first job to finish")
    sockets = list(data.glob("redis-*.sock"))
    assert len(sockets) == 1
    pids = subprocess.run(["pgrep", "-f", sockets[0].name], capture_output=True, text=True).stdout.split()
    assert pids
    for pid in pids:
        os.kill(int(pid), signal.SIGKILL)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 2, out + err
    assert "private Redis stopped" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
