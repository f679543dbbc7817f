"""Delivery guarantees under faults, with real processes: a worker killed with SIGKILL mid-batch
(redelivered by the visibility timeout, or with the default timeout by another worker's janitor
once the dead worker's heartbeat expired), Redis killed and restarted (AOF), the database
unreachable for a few seconds, jobs never sent, SIGTERM mid-batch. Every job ends done exactly
once: one prediction and one metrics row each."""

from __future__ import annotations

import io
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from PIL import Image
from sqlalchemy import func, select

from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.cli.status import collect_status
from sa2va_queue.core.broker import make_celery
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.db.models import Job, Metrics, Prediction
from sa2va_queue.db.session import session_scope, upgrade_schema
from sa2va_queue.producer.dataset import Frame
from sa2va_queue.producer.enqueue import enqueue_frames
from sa2va_queue.worker.heartbeat import PREFIX as ALIVE_PREFIX
from tests.conftest import pg_database
from tests.integration.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow

# A batch of 8 takes ~80 ms: there is a batch to kill. The delay is part of the model key, so the
# run and its workers use this same spec.
SLOW_NOOP = ModelSpec.parse("noop?delay_ms=40&item_ms=5")


def frames(n: int, size: int = 32) -> list[Frame]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, format="PNG")
        out.append(Frame(name=f"f{i:04d}.png", path=Path(f"f{i:04d}.png"), data=buf.getvalue(), width=size,
                         height=size, mode="L", media_type="image/png", gt_mask=rng.random((size, size)) > 0.8,
                         gt_source="synthetic", error=None))
    return out


def submit(settings: Settings, n: int, *, spec: ModelSpec = SLOW_NOOP, run_name: str = "faults",
           send: bool = True) -> int:
    """Register n frames as a run of `spec` and (unless send=False) send them; the run's id."""
    return enqueue_frames(settings, frames(n), model=spec, run_name=run_name, send=send).run.id


def start_worker(settings: Settings, log: Path, spec: ModelSpec = SLOW_NOOP) -> WorkerProcess:
    app = make_celery(settings)
    try:
        return WorkerProcess(settings, str(spec), log_path=log).start(app)
    finally:
        app.close()


def wait_until(predicate, timeout: float, what: str, state=lambda: "") -> None:
    """Poll `predicate`; on timeout fail with `state()` (e.g. the job counts) in the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} {state()}")


def run_counts(db_url: str, run_id: int) -> dict[str, int]:
    return JobStore(db_url).run_counts(run_id)


def done_count(db_url: str, run_id: int) -> int:
    return run_counts(db_url, run_id).get("done", 0)


def assert_exactly_once(db_url: str, run_id: int, n: int) -> None:
    assert run_counts(db_url, run_id) == {"done": n}
    with session_scope(db_url) as session:
        assert session.scalar(select(func.count()).select_from(Prediction)) == n
        assert session.scalar(select(func.count(func.distinct(Prediction.job_id)))) == n
        assert session.scalar(select(func.count()).select_from(Metrics)) == n


def test_worker_killed_mid_batch_loses_nothing_and_doubles_nothing(tmp_path, redis_url):
    with pg_database() as db_url:
        upgrade_schema(db_url)
        settings = Settings.load(environ={}, data_dir=tmp_path, broker_url=redis_url, database_url=db_url,
                                 max_batch_size=8, visibility_timeout_s=4, allow_short_visibility_timeout=True)
        run_id = submit(settings, 500)
        first = start_worker(settings, tmp_path / "w1.log")
        wait_until(lambda: done_count(db_url, run_id) >= 100, 120, "100 jobs done")
        first.proc.send_signal(signal.SIGKILL)  # mid-batch: jobs claimed, some predictions stored, none acked
        first.proc.wait()
        with session_scope(db_url) as session:
            interrupted = session.scalar(select(func.count()).where(Job.run_id == run_id, Job.status == "running"))
        second = start_worker(settings, tmp_path / "w2.log")
        try:
            wait_until(lambda: done_count(db_url, run_id) == 500, 240, "all 500 jobs done")
        finally:
            second.stop()
        assert interrupted > 0, "the kill should have caught jobs in flight"
        assert_exactly_once(db_url, run_id, 500)
        with session_scope(db_url) as session:  # the interrupted ones were delivered again
            assert session.scalar(select(func.max(Job.attempts)).where(Job.run_id == run_id)) >= 2


def test_worker_killed_with_the_default_visibility_timeout_its_jobs_are_done_by_the_next_worker(tmp_path, redis_url):
    """SIGKILL with the default visibility timeout (an hour): Redis would hold the dead worker's
    reserved messages that long. Once its heartbeat key expires, `status` shows its running jobs as
    orphaned (never running), and a new worker's janitor sends them again: all done within two
    minutes of the kill, exactly once. Default janitor interval (30 s) too."""
    with pg_database() as db_url:
        upgrade_schema(db_url)
        settings = Settings.load(environ={}, data_dir=tmp_path, broker_url=redis_url, database_url=db_url,
                                 max_batch_size=8)
        assert settings.visibility_timeout_s == 3600 and settings.janitor_interval_s == 30
        run_id = submit(settings, 500)
        first = start_worker(settings, tmp_path / "w1.log")
        wait_until(lambda: done_count(db_url, run_id) >= 100, 120, "100 jobs done")
        first.proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.proc.wait()
        store = JobStore(db_url)
        held = store.running_workers().get(first.name, 0)
        assert held > 0, "the kill should have caught jobs in flight"
        client = redis.Redis.from_url(redis_url)
        wait_until(lambda: not client.exists(ALIVE_PREFIX + first.name), 30, "the dead worker's heartbeat to expire")

        status = collect_status(settings)  # no worker alive: nothing moves while we look
        assert status["dead_workers"] == [first.name]
        (row,) = [r for r in status["runs"] if r["run"] == "faults"]
        assert row["running"] == 0 and row["orphaned"] == held, row
        assert first.name not in {w["worker"] for w in status["workers"]}

        second = start_worker(settings, tmp_path / "w2.log")
        try:
            seen: list[dict] = []

            def all_done() -> bool:
                snapshot = collect_status(settings)
                (r,) = [r for r in snapshot["runs"] if r["run"] == "faults"]
                seen.append({**r, "dead_workers": snapshot["dead_workers"]})
                return r["done"] == 500

            wait_until(all_done, max(1.0, 120 - (time.monotonic() - killed_at)), "all 500 jobs done within 2 min",
                       state=lambda: (run_counts(db_url, run_id), store.running_workers()))
            elapsed = time.monotonic() - killed_at
        finally:
            second.stop()
        assert_exactly_once(db_url, run_id, 500)
        assert elapsed < 120, elapsed
        # With the second worker busy (before its first sweep, 30 s after its start) the dead
        # worker's jobs still counted as orphaned beside the live worker's running ones; later
        # snapshots only ever counted fewer of them, always naming the dead worker.
        assert seen[0]["orphaned"] == held and seen[0]["dead_workers"] == [first.name], seen[0]
        for snap in seen:
            if snap["orphaned"]:
                assert snap["dead_workers"] == [first.name] and snap["orphaned"] <= held, snap
        with session_scope(db_url) as session:  # the orphans were claimed a second time
            again = session.execute(select(Job.worker, func.count()).where(Job.attempts == 2)
                                    .group_by(Job.worker)).all()
            assert again == [(second.name, held)], again
            assert session.scalar(select(func.max(Job.attempts))) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_redis(port: int, folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(folder), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    wait_until(lambda: _pings(client), 20, "redis to answer")
    return proc


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs the redis-server binary")
def test_redis_killed_and_restarted_with_aof_loses_nothing(tmp_path):
    port = _free_port()
    folder = tmp_path / "redis"
    folder.mkdir()
    server = _start_redis(port, folder)
    with pg_database() as db_url:
        upgrade_schema(db_url)
        # The janitor re-sends a message Redis lost between BRPOP and the `unacked` write.
        settings = Settings.load(environ={}, data_dir=tmp_path, broker_url=f"redis://127.0.0.1:{port}/0",
                                 database_url=db_url, max_batch_size=8, visibility_timeout_s=4, allow_short_visibility_timeout=True,
                                 janitor_interval_s=2)
        run_id = submit(settings, 500)
        worker = start_worker(settings, tmp_path / "w.log")
        try:
            wait_until(lambda: done_count(db_url, run_id) >= 100, 120, "100 jobs done")
            server.send_signal(signal.SIGKILL)
            server.wait()
            time.sleep(2)
            server = _start_redis(port, folder)
            wait_until(lambda: done_count(db_url, run_id) == 500, 240, "all 500 jobs done after the restart",
                       state=lambda: run_counts(db_url, run_id))
        finally:
            worker.stop()
            server.terminate()
            server.wait()
        assert_exactly_once(db_url, run_id, 500)


def test_database_unreachable_for_seconds_jobs_retried_and_done(tmp_path, redis_url):
    with pg_database() as db_url:
        upgrade_schema(db_url)
        proxy = TcpProxy(("127.0.0.1", 5432)).start()
        via_proxy = db_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
        direct = Settings.load(environ={}, data_dir=tmp_path, broker_url=redis_url, database_url=db_url,
                               max_batch_size=8, visibility_timeout_s=4, allow_short_visibility_timeout=True)
        run_id = submit(direct, 300)
        worker = start_worker(direct.with_(database_url=via_proxy), tmp_path / "w.log")
        try:
            wait_until(lambda: done_count(db_url, run_id) >= 50, 120, "50 jobs done")
            proxy.cut()
            time.sleep(3)
            proxy.start()
            wait_until(lambda: done_count(db_url, run_id) == 300, 240, "all 300 jobs done after the outage")
        finally:
            worker.stop()
            proxy.cut()
        assert_exactly_once(db_url, run_id, 300)
        assert "transient error" in (tmp_path / "w.log").read_text()  # the outage was felt and retried


def test_a_job_whose_message_never_reached_the_broker_is_resent(tmp_path, redis_url):
    """A producer that died between its SQL commit and its send: the worker's janitor finds the
    jobs (pending, no message, queue empty) and sends them."""
    with pg_database() as db_url:
        upgrade_schema(db_url)
        settings = Settings.load(environ={}, data_dir=tmp_path, broker_url=redis_url, database_url=db_url,
                                 janitor_interval_s=1)
        run_id = submit(settings, 5, run_name="lost", send=False)
        assert run_counts(db_url, run_id) == {"pending": 5}
        worker = start_worker(settings, tmp_path / "w.log")
        try:
            wait_until(lambda: done_count(db_url, run_id) == 5, 60, "the 5 unsent jobs done",
                       state=lambda: run_counts(db_url, run_id))
        finally:
            worker.stop()
        assert_exactly_once(db_url, run_id, 5)


def test_sigterm_lets_the_batch_in_flight_finish(tmp_path, redis_url):
    """Warm shutdown: the jobs the model is working on when SIGTERM arrives end done; the rest stay
    in the queue for the next worker (default visibility timeout: nothing may wait for it).
    Nothing is lost, nothing doubled."""
    spec = ModelSpec.parse("noop?delay_ms=1500")
    with pg_database() as db_url:
        upgrade_schema(db_url)
        settings = Settings.load(environ={}, data_dir=tmp_path, broker_url=redis_url, database_url=db_url,
                                 max_batch_size=4)
        run_id = submit(settings, 12, spec=spec)
        slow = start_worker(settings, tmp_path / "w1.log", spec)
        wait_until(lambda: run_counts(db_url, run_id).get("running", 0) > 0, 60, "a batch in flight")
        slow.stop(timeout=60)  # SIGTERM
        assert slow.proc.returncode == 0
        counts = run_counts(db_url, run_id)
        assert counts.get("running", 0) == 0 and counts.get("done", 0) >= 1, counts  # in flight: finished
        second = start_worker(settings, tmp_path / "w2.log", spec)
        try:
            wait_until(lambda: done_count(db_url, run_id) == 12, 120, "all 12 jobs done",
                       state=lambda: run_counts(db_url, run_id))
        finally:
            second.stop()
        assert_exactly_once(db_url, run_id, 12)
