"""`sa2va-queue monitor`: no secret on any command line, Flower's history kept on disk, and Flower
stopped with its parent on SIGTERM and on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_http(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers (401 without a login)
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_monitor_hides_secrets_keeps_history_and_stops_its_child(redis_url, tmp_path, sig):
    port = _free_port()
    password = "pw-" + os.urandom(6).hex()
    broker = redis_url  # tests/conftest.py: no password; check the Flower one and the URL itself
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")},
           "SA2VA_BROKER_URL": broker, "SA2VA_DATA_DIR": str(tmp_path / "data"),
           "SA2VA_FLOWER_PASSWORD": password, "SA2VA_FLOWER_PORT": str(port)}
    monitor = subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "monitor"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/healthcheck")
        children = _children(monitor.pid)
        assert len(children) == 1, children
        for pid in (monitor.pid, *children):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            assert password not in argv and broker not in argv, f"secret on the command line of {pid}: {argv}"
        monitor.send_signal(sig)
        out, _ = monitor.communicate(timeout=30)
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()
    assert monitor.returncode == 0, out
    deadline = time.monotonic() + 5
    while _alive(children[0]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(children[0]), "Flower outlived `sa2va-queue monitor`"
    state = list((tmp_path / "data" / "flower").glob("flower.db*"))
    assert state, "Flower's persistent state was not written on exit"
