"""`sa2va-queue` end to end, as a user runs it."""

from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys

import pytest

from sa2va_queue.core.broker import queue_names
from sa2va_queue.core.modelspec import ModelSpec
from tests.conftest import pg_database
from tests.e2e.conftest import cli, status_json

pytestmark = pytest.mark.slow


def test_run_on_the_embedded_default_starts_and_stops_its_own_services(synth_set, tmp_path):
    data = tmp_path / "work"
    proc = cli("--data-dir", str(data), "run", str(synth_set), "--model", "vesselness", "--run-name", "e2e")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((data / "reports" / "e2e.json").read_text())
    dice = report["metrics"]["dice"]
    assert dice["n"] == 8 and 0.4 < dice["mean"] < 0.95, dice
    assert dice["ci_low"] <= dice["mean"] <= dice["ci_high"]
    assert report["suspicious"]["run"] is False and report["suspicious"]["frames"] == []
    html = (data / "reports" / "e2e.html").read_text()
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)  # base64 may spell anything
    assert "data:image/png;base64" in html and "SYN0" not in text  # patient ids are pseudonymised
    assert not (data / "redis.sock").exists()  # the private Redis was stopped
    assert "dice" in proc.stdout


def test_split_by_sequence_then_run_only_the_test_frames(synth_set, tmp_path):
    splits = tmp_path / "splits"
    data = tmp_path / "work"
    proc = cli("--data-dir", str(data), "split", str(synth_set), "--test", "0.3", "--seed", "1", "--out", str(splits))
    assert proc.returncode == 0, proc.stderr
    test_names = (splits / "test.txt").read_text().split()
    assert 0 < len(test_names) < 8 and not any("SYN0" in n for n in test_names)  # pseudonyms only
    # the scan finds files by their raw names: the file marked as holding them
    proc = cli("--data-dir", str(data), "run", str(synth_set), "--split", str(splits / "test.PHI.txt"),
               "--run-name", "t", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((data / "reports" / "t.json").read_text())
    assert report["metrics"]["dice"]["n"] == len(test_names)


def test_bad_frames_fail_alone_with_their_reason_and_the_run_goes_on(synth_set, tmp_path):
    ds = tmp_path / "ds"
    shutil.copytree(synth_set, ds)
    (ds / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    proc = cli("--data-dir", str(tmp_path / "work"), "run", str(ds), "--run-name", "b", "--format", "json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken.jpg" in proc.stdout  # the validation table names it
    report = json.loads((tmp_path / "work" / "reports" / "b.json").read_text())
    counts = report["counts"]["by_status"]
    assert counts["done"] == 8 and counts["failed"] == 1, counts
    assert "broken.jpg" in json.dumps(report["failures"])


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["run", "{ds}", "--model", "unet"], {}, "unknown model 'unet'"),
        (["run", "{tmp}/missing"], {}, "does not exist"),
        (["status"], {"SA2VA_BROKER_URL": "redis://127.0.0.1:1/0"}, "SA2VA_BROKER_URL"),
        (["run", "{ds}"], {"SA2VA_BROKER_URL": "redis://127.0.0.1:1/0"}, "SA2VA_BROKER_URL"),
        (["run", "{ds}"], {"SA2VA_DATABASE_URL": "postgresql://nobody@127.0.0.1:1/x"}, "SA2VA_DATABASE_URL"),
        (["run", "{ds}"], {"SA2VA_MAX_BATCH_SIZE": "lots"}, "SA2VA_MAX_BATCH_SIZE"),
    ],
)
def test_errors_are_one_line_naming_the_thing(args, env, needle, synth_set, tmp_path):
    args = [a.format(ds=synth_set, tmp=tmp_path) for a in args]
    proc = cli("--data-dir", str(tmp_path / "work"), *args, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_external_services_with_a_running_worker(synth_set, tmp_path, redis_url):
    """SA2VA_BROKER_URL and SA2VA_DATABASE_URL set: `run` uses them and the worker already there."""
    with pg_database() as db:
        _external_run(synth_set, tmp_path, {"SA2VA_BROKER_URL": redis_url, "SA2VA_DATABASE_URL": db})


def _external_run(synth_set, tmp_path, env):
    spec = ModelSpec.parse("vesselness")
    urgent, bulk = queue_names(spec)
    assert cli("migrate", env=env).returncode == 0
    proc = cli("run", str(synth_set), "--run-name", "ext", env=env, timeout=30)
    assert proc.returncode == 2 and "no worker serves model vesselness" in proc.stderr, proc.stderr
    assert spec.key in proc.stderr
    worker = subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "worker", "--model", "vesselness"],
                              env={**os.environ, **env}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            if any(bulk in w["queues"] and w["alive"] for w in status_json(env)["workers"]):
                break
        proc = cli("--data-dir", str(tmp_path / "w"), "run", str(synth_set), "--run-name", "ext",
                   "--format", "json", env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        report = json.loads((tmp_path / "w" / "reports" / "ext.json").read_text())
        assert report["counts"]["by_status"]["done"] == 8
        status = status_json(env)
        (run,) = [r for r in status["runs"] if r["run"] == "ext"]
        assert run["done"] == 8 and run["running"] == run["queued"] == run["orphaned"] == 0, run
        (model,) = [m for m in status["models"] if m["key"] == spec.key]
        assert model["unfinished_jobs"] == 0 and len(model["workers"]) == 1, model
        assert {urgent, bulk} <= {q["queue"] for q in status["queues"] if q["served"]}
        assert status["dead_workers"] == []
    finally:
        worker.terminate()
        worker.wait(60)
