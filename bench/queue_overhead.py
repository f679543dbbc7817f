"""Jobs per second and per-job overhead through the whole path with a no-op model.

Enqueue (SQL row + Redis message) -> real worker process -> micro-batch -> prediction row ->
metrics row. Baseline in the same run: the same per-job work (decode, model, mask encoding,
metrics) called in-process, without broker or database. Prints JSON.

    python bench/queue_overhead.py --jobs 500 --database sqlite
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from sqlalchemy import func, select

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import Job, Metrics
from sa2va_queue.db.scratch import scratch_postgres
from sa2va_queue.db.session import get_sessionmaker, session_scope, upgrade_schema
from sa2va_queue.producer import enqueue
from sa2va_queue.producer.dataset import Frame
from sa2va_queue.core.imaging import decode_image, encode_mask, encode_probability
from sa2va_queue.cli.local_worker import WorkerProcess
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.core.settings import Settings
from sa2va_queue.core.broker import make_celery, queue_names
from sa2va_queue.worker.backends import build_model
from sa2va_queue.worker.backends.base import SegmentationRequest


def frames(n: int, size: int) -> list[Frame]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8)).save(buf, format="PNG")
        gt = rng.random((size, size)) > 0.9
        out.append(Frame(name=f"f{i:05d}.png", path=Path(f"f{i:05d}.png"), data=buf.getvalue(), width=size,
                         height=size, mode="L", media_type="image/png", gt_mask=gt, gt_source="synthetic", error=None))
    return out


def direct_baseline(items: list[Frame]) -> float:
    """ms per job for the same work in-process: no broker, no database."""
    model = build_model("noop")
    start = time.perf_counter()
    for frame in items:
        image = decode_image(frame.data, frame.name)
        result = model.predict([model.preprocess(SegmentationRequest("x", image, "p"))])[0]
        encode_mask(result.mask), encode_probability(result.probability)
        compute_metrics(result.mask, frame.gt_mask)
    return (time.perf_counter() - start) * 1000.0 / len(items)


def database_url(kind: str, tmp: Path) -> tuple[str, callable]:
    """(SQLAlchemy url, cleanup): SQLite in `tmp`, or a scratch PostgreSQL database."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'bench.sqlite'}", lambda: None
    scratch = scratch_postgres("postgresql://postgres@127.0.0.1:5432/test", "sa2va_bench")
    return scratch.__enter__(), lambda: scratch.__exit__(None, None, None)


def run(jobs: int, size: int, database: str, redis_url: str, batch: int) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="sa2va-bench-"))
    db_url, drop = database_url(database, tmp)
    try:
        upgrade_schema(db_url)
        settings = Settings.load(environ={}, data_dir=tmp, broker_url=redis_url, database_url=db_url,
                                 max_batch_size=batch, max_queue_delay_ms=5)
        import redis

        redis.Redis.from_url(redis_url).flushdb()
        app = make_celery(settings)
        items = frames(jobs, size)
        worker = WorkerProcess(settings, "noop", tag="noop", log_path=tmp / "worker.log").start(app)
        try:
            _, queue = queue_names("noop")
            t0 = time.perf_counter()
            with session_scope(db_url) as session:
                run_row = enqueue.get_or_create_run(session, name="bench", model_spec="noop", dataset="bench",
                                                    prompt="p", threshold=0.5, split=None)
                reg = enqueue.register_frames(session, BlobStore(), run_row, items, queue=queue, prompt="p")
            t_registered = time.perf_counter()
            enqueue.send_jobs(app, get_sessionmaker(db_url), reg.new_job_ids, queue)
            t_sent = time.perf_counter()
            while True:
                with session_scope(db_url) as session:
                    done = session.scalar(select(func.count()).select_from(Metrics))
                if done >= jobs:
                    break
                time.sleep(0.05)
            t_done = time.perf_counter()
            with session_scope(db_url) as session:
                rows = session.execute(select(Job.enqueued_at, Job.started_at, Job.finished_at)).all()
        finally:
            worker.stop()
            app.close()
        e2e = np.array([(f - e).total_seconds() * 1000 for e, _, f in rows])
        wait = np.array([(s - e).total_seconds() * 1000 for e, s, _ in rows])
        baseline = direct_baseline(items[: min(200, jobs)])
        wall = t_done - t0
        return {
            "benchmark": "queue_overhead",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
            "cpu_count": __import__("os").cpu_count(),
            "database": database,
            "jobs": jobs,
            "image_size": size,
            "max_batch_size": batch,
            "register_s": round(t_registered - t0, 3),
            "send_s": round(t_sent - t_registered, 3),
            "wall_s": round(wall, 3),
            "jobs_per_s": round(jobs / wall, 1),
            "ms_per_job_through_queue": round(wall * 1000 / jobs, 2),
            "ms_per_job_in_process_baseline": round(baseline, 2),
            "overhead_ms_per_job": round(wall * 1000 / jobs - baseline, 2),
            "end_to_end_ms": {"p50": round(float(np.percentile(e2e, 50)), 1), "p95": round(float(np.percentile(e2e, 95)), 1)},
            "queue_wait_ms": {"p50": round(float(np.percentile(wait, 50)), 1), "p95": round(float(np.percentile(wait, 95)), 1)},
        }
    finally:
        drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--max-batch-size", type=int, default=8)
    args = parser.parse_args()
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    for kind in kinds:
        print(json.dumps(run(args.jobs, args.size, kind, args.redis_url, args.max_batch_size)), flush=True)


if __name__ == "__main__":
    main()
