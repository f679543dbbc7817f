from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sa2va_queue.producer.synth import generate


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console command, as a user runs it, with a clean SA2VA_* environment."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")}
    return subprocess.run([sys.executable, "-m", "sa2va_queue.cli", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def status_json(env: dict[str, str]) -> dict:
    """`sa2va-queue status --json` as data (fails on a non-zero exit)."""
    proc = cli("status", "--json", env=env, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "frames"
    generate(out, n=8, seed=3)
    return out
