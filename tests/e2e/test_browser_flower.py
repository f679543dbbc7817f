"""Flower as an operator sees it, in a real headless Chromium: Redis, a worker and `sa2va-queue
monitor` started for real; jobs enqueued with the CLI; after logging in, the worker is online and
every job has succeeded under a readable name (run, pseudonymised frame, model), with no patient
identifier on the page. Screenshots go to the test's tmp folder."""

from __future__ import annotations

import base64
import json
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

from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.producer.synth import generate
from tests.e2e.browser import browser  # noqa: F401  (fixture)
from tests.e2e.conftest import cli

pytestmark = pytest.mark.slow

USER, PASSWORD = "operator", "pw-" + os.urandom(6).hex()
KEY = "k" * 8 + os.urandom(8).hex()  # the deployment's pseudonym key (SA2VA_PSEUDONYM_KEY)
RUN = "flower-browser"
N_FRAMES = 3
# Table rows as text without whitespace (Flower breaks long names over lines); enough for names,
# states and reprs, none of which hold spaces.
ROWS_JS = "return Array.from(document.querySelectorAll('table tbody tr')).map(r => r.textContent.replace(/\\s+/g, ''));"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _api(url: str) -> tuple[int, bytes]:
    request = urllib.request.Request(url)
    request.add_header("Authorization", "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except OSError:
        return 0, b""


def _until(what: str, check, timeout: float, on_timeout=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    if on_timeout is not None:  # e.g. a screenshot of what the page showed instead
        on_timeout()
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_flower_shows_the_worker_online_and_every_job_succeeded_by_name(browser, redis_url, tmp_path):  # noqa: F811
    frames = tmp_path / "frames"
    generate(frames, n=N_FRAMES, seed=4)
    names = sorted(p.name for p in frames.glob("*.jpg"))
    port = _free_port()
    env = {"SA2VA_BROKER_URL": redis_url, "SA2VA_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite'}",
           "SA2VA_DATA_DIR": str(tmp_path / "data"), "SA2VA_PSEUDONYM_KEY": KEY,
           "SA2VA_FLOWER_USER": USER, "SA2VA_FLOWER_PASSWORD": PASSWORD, "SA2VA_FLOWER_PORT": str(port)}
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("SA2VA_")}, **env}
    assert cli("migrate", env=env).returncode == 0
    logs = tmp_path / "logs"
    logs.mkdir()
    flower = subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "monitor"], env=full_env,
                              stdout=open(logs / "flower.log", "w"), stderr=subprocess.STDOUT)
    worker = subprocess.Popen([sys.executable, "-m", "sa2va_queue.cli", "worker", "--model", "vesselness",
                               "--name", "browser-test@%h"], env=full_env,
                              stdout=open(logs / "worker.log", "w"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _until("Flower", lambda: _api(base + "/healthcheck")[0] == 200, 60)
        _until("the worker in Flower", lambda: b"browser-test@" in _api(base + "/api/workers?refresh=1")[1], 120)
        done = cli("enqueue", str(frames), "--model", "vesselness", "--run-name", RUN, env=env)
        assert done.returncode == 0, done.stdout + done.stderr

        def all_succeeded():
            status, body = _api(base + "/api/tasks")
            ours = {i: t for i, t in (json.loads(body) if status == 200 else {}).items()
                    if RUN in f"{t.get('args')} {t.get('kwargs')}"}  # the run is named in every task
            return ours if sum(t.get("state") == "SUCCESS" for t in ours.values()) >= N_FRAMES else None

        tasks = _until("every job of the run to succeed, named by its run", all_succeeded, 240)
        assert len(tasks) == N_FRAMES

        # A person's view: log in (basic auth), look at the workers, then at the tasks.
        login = f"http://{USER}:{PASSWORD}@127.0.0.1:{port}"
        browser.get(login + "/workers")
        _until("the worker online on /workers", lambda: any(
            "browser-test@" in row and "Online" in row for row in browser.execute_script(ROWS_JS)), 60,
            on_timeout=lambda: browser.save_screenshot(str(tmp_path / "flower-workers-timeout.png")))
        browser.save_screenshot(str(tmp_path / "flower-workers.png"))

        browser.get(login + "/tasks")
        rows = _until("the task table", lambda: _task_rows(browser, N_FRAMES), 60,
                      on_timeout=lambda: browser.save_screenshot(str(tmp_path / "flower-tasks-timeout.png")))
        browser.save_screenshot(str(tmp_path / "flower-tasks.png"))
        pseudonyms = Pseudonymizer(KEY.encode())
        for name in names:
            shown = pseudonyms.name(name)
            assert shown != name
            row = next((r for r in rows if shown in r), None)
            assert row is not None, f"no task row names {shown}: {rows}"
            assert "SUCCESS" in row and RUN in row and "vesselness" in row, row
        page = browser.find_element("tag name", "body").text
        assert "SYN0" not in page, "a patient identifier is shown in Flower"
    finally:
        _stop(worker)
        _stop(flower)
    assert (tmp_path / "flower-tasks.png").stat().st_size > 10_000


def _task_rows(browser, n: int) -> list[str] | None:
    """The task table's rows as texts, once it shows at least n of them."""
    rows = [r for r in browser.execute_script(ROWS_JS) if "SUCCESS" in r]
    return rows if len(rows) >= n else None
