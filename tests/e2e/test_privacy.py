"""Issue 8, private by default, through the console command as a user runs it: the data dir, the
SQLite database and the reports are owner-only unless SA2VA_FILE_MODE=umask; Prometheus listens on
loopback; bad names and settings are one line (exit 2), never a traceback."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from sa2va_queue.db.models import Run
from sa2va_queue.db.session import session_scope
from sa2va_queue.worker.observability import WorkerMetrics


def _cli(*args: str, umask: int = 0o022, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")}
    return subprocess.run([sys.executable, "-m", "sa2va_queue.cli", *args], env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=120, preexec_fn=lambda: os.umask(umask))


def _add_run(data: Path, name: str) -> None:
    with session_scope(f"sqlite:///{(data / 'sa2va-queue.sqlite').resolve()}") as session:
        session.add(Run(name=name, model_spec="vesselness", dataset="frames", prompt="p"))


def _modes(root: Path) -> dict[str, int]:
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[path.relative_to(root).as_posix()] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_data_dir_database_and_reports_are_owner_only_by_default(tmp_path):
    data = tmp_path / "work"
    assert _cli("--data-dir", str(data), "migrate").returncode == 0
    _add_run(data, "privacy")
    proc = _cli("--data-dir", str(data), "report", "privacy")
    assert proc.returncode == 0, proc.stderr
    modes = _modes(data)
    assert {"sa2va-queue.sqlite", "reports/privacy.md", "reports/privacy.html", "reports/privacy.json"} <= set(modes)
    opened = {name: oct(mode) for name, mode in modes.items() if mode & 0o077}
    assert not opened, f"readable by group or others: {opened}"
    assert modes["."] == 0o700 and modes["sa2va-queue.sqlite"] == 0o600 and modes["reports/privacy.json"] == 0o600


def test_file_mode_umask_honours_the_users_umask(tmp_path):
    data = tmp_path / "shared"
    proc = _cli("--data-dir", str(data), "migrate", umask=0o027, env={"SA2VA_FILE_MODE": "umask"})
    assert proc.returncode == 0, proc.stderr
    modes = _modes(data)
    assert modes["."] == 0o750 and modes["sa2va-queue.sqlite"] == 0o640


def test_run_names_that_differ_get_different_report_files(tmp_path):
    data = tmp_path / "work"
    assert _cli("--data-dir", str(data), "migrate").returncode == 0
    for name in ("a/b", "a_b"):
        _add_run(data, name)
        proc = _cli("--data-dir", str(data), "report", name, "--format", "json")
        assert proc.returncode == 0, proc.stderr
    reports = sorted(p.name for p in (data / "reports").glob("*.json"))
    assert len(reports) == 2 and "a_b.json" in reports


@pytest.mark.parametrize(("args", "env", "expected"), [
    (["report", "[/]"], {}, "no letter or digit"),
    (["report", "x" * 300], {}, "the limit is 120"),
    (["migrate"], {"SA2VA_MAX_QUEUE_DELAY_MS": "nan"}, "SA2VA_MAX_QUEUE_DELAY_MS=nan"),
    (["migrate"], {"SA2VA_DATABASE_URL": "postgresql://u@127.0.0.1:1/x?password=hunter2"}, "password=***"),
])
def test_bad_names_and_settings_are_one_line(tmp_path, args, env, expected):
    proc = _cli("--data-dir", str(tmp_path / "w"), *args, env=env)
    assert proc.returncode == 2
    assert expected in " ".join(proc.stderr.split()) and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr + proc.stdout


def test_data_dir_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "data"
    afile.write_text("not a folder")
    proc = _cli("--data-dir", str(afile), "migrate")
    assert proc.returncode == 2 and "is a file, not a folder" in proc.stderr and "Traceback" not in proc.stderr


def test_prometheus_listens_on_loopback_unless_configured():
    server = WorkerMetrics().serve(0)  # port 0: any free port; the default host
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            assert b"sa2va_batch_size" in resp.read()
    finally:
        server.shutdown()
        server.server_close()
