"""Start a worker process for `run` and wait until it answers, or say why it died."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from celery import Celery

from sa2va_queue.core.exceptions import ModelError
from sa2va_queue.core.processes import die_with_parent
from sa2va_queue.core.settings import Settings


def node_name(tag: str) -> str:
    return f"{tag}-{os.getpid()}-{int(time.time() * 1000) % 100000}@{socket.gethostname()}"


class WorkerProcess:
    """`sa2va-queue worker` as a child process with the given settings in its environment."""

    def __init__(self, settings: Settings, model: str, *, log_path: Path, extra_args: list[str] | None = None) -> None:
        self.settings = settings
        self.model = model
        self.name = node_name(model.split(":", 1)[0].split("?", 1)[0])
        self.log_path = log_path
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, app: Celery, timeout: float = 180.0) -> "WorkerProcess":
        env = {**os.environ, **self.settings.to_environ()}
        cmd = [sys.executable, "-m", "sa2va_queue.cli", "worker", "--model", self.model,
               "--name", self.name, *self.extra_args]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=die_with_parent)  # a killed `run` leaves no worker
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ModelError(f"worker exited with code {self.proc.returncode} at start: {self.log_tail()}")
            if app.control.ping(destination=[self.name], timeout=0.5):
                return self
        self.stop()
        raise ModelError(f"worker did not come up within {timeout:.0f} s: {self.log_tail()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (warm shutdown: the batch in flight finishes), then SIGKILL after `timeout`."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        errors = [line for line in text if "error" in line.lower()]
        return " | ".join((errors or text)[-lines:]) + f" (log: {self.log_path})"
