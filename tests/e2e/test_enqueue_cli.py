"""`enqueue` for scripts: warns (or exits 3) when no worker serves the model version; --json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import cli

pytestmark = pytest.mark.slow


def test_enqueue_without_a_worker_warns_or_refuses(synth_set: Path, tmp_path: Path, redis_url: str) -> None:
    env = {"SA2VA_BROKER_URL": redis_url, "SA2VA_DATA_DIR": str(tmp_path / "work")}
    refused = cli("enqueue", str(synth_set), "--model", "noop", "--run-name", "r", "--require-worker", env=env)
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "no worker serves model noop" in refused.stderr
    status = cli("status", "--json", env=env)
    assert status.returncode == 0 and json.loads(status.stdout)["runs"] == []  # nothing was stored

    done = cli("enqueue", str(synth_set), "--model", "noop", "--run-name", "r", "--json", env=env)
    assert done.returncode == 0, done.stderr
    assert "warning:" in done.stderr and "no worker serves model noop" in done.stderr
    out = json.loads(done.stdout)
    assert out["run"] == "r" and out["sent"] == 8 and out["workers"] == [] and out["queue"].startswith("sa2va.bulk.noop-")

    missing = cli("status", "--run", "nosuchrun", env=env)
    assert missing.returncode == 2 and "no run named 'nosuchrun'" in missing.stderr
