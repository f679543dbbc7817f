"""The queue path against a bare Celery app, in the same run, on the same Redis and machine.

1. Bare Celery (bench/bare_celery.py): a worker with the same threads pool and concurrency,
   acks_late and prefetch 1; the producer sends N no-op tasks; timed from the first send to the
   last task done.
2. The whole path: `sa2va-queue run DATA --model noop` as a subprocess against an already running
   `sa2va-queue worker --model noop`, timed from the command's start to its end: start-up, scan,
   validation, registration, Redis, the worker, prediction and metrics rows, the report.
3. Optionally (--register-only) the producer alone: frames registered per second, peak memory.

Prints one JSON object per database.

    python bench/queue_overhead.py --frames 2000 --size 64 --database both --repeats 3
    python bench/queue_overhead.py --frames 600 --size 512 --gt --database sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import redis
from PIL import Image

HERE = Path(__file__).resolve().parent
ADMIN_PG = "postgresql://postgres@127.0.0.1:5432/test"


def write_frames(root: Path, n: int, size: int, gt: bool) -> Path:
    """N grey JPEG frames (quality 92, as the angiography data and `synth`) with vessel-like stripes,
    and `_mask.png` ground truth."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        mask = np.abs(np.sin((xx + i) / 9.0) * size / 4 + size / 2 - yy) < max(1, size // 64)
        image = np.clip(180 - 100 * mask + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"B{i // 50:03d}__1-4_1_BENCH_frame_{i:06d}.jpg", quality=92)
        if gt:
            Image.fromarray(mask).save(root / f"B{i // 50:03d}__1-4_1_BENCH_frame_{i:06d}_mask.png")
    return root


def bare_celery(url: str, n: int, threads: int) -> dict:
    sys.path.insert(0, str(HERE))
    from bare_celery import COUNTER, make_app

    client = redis.Redis.from_url(url)
    client.flushdb()
    proc = subprocess.Popen([sys.executable, str(HERE / "bare_celery.py"), url, str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    app = make_app(url)
    try:
        while not app.control.ping(destination=["bare@bench"], timeout=0.5):
            time.sleep(0.1)
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(n):
                app.send_task("bare.noop", args=[f"job-{i}"], queue="bare", producer=producer)
        while int(client.get(COUNTER) or 0) < n:
            time.sleep(0.01)
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(30)
        app.close()
    return {"wall_s": round(wall, 3), "per_s": round(n / wall, 1)}


def whole_path(url: str, db_url: str, data: Path, tmp: Path, n: int, threads: int, batch: int) -> dict:
    from sa2va_queue.cli.local_worker import WorkerProcess
    from sa2va_queue.core.broker import make_celery
    from sa2va_queue.core.settings import Settings
    from sa2va_queue.db.session import upgrade_schema

    redis.Redis.from_url(url).flushdb()
    upgrade_schema(db_url)
    settings = Settings.load(environ={}, data_dir=tmp / "work", broker_url=url, database_url=db_url,
                             max_batch_size=batch, max_queue_delay_ms=5)
    app = make_celery(settings)
    worker = WorkerProcess(settings, "noop", log_path=tmp / "worker.log",
                           extra_args=["--concurrency", str(threads)]).start(app)
    env = {**os.environ, **settings.to_environ()}
    try:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "sa2va_queue.cli", "run", str(data), "--model", "noop",
                               "--run-name", f"bench-{os.getpid()}-{int(t0)}", "--format", "json"],
                              env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
    finally:
        worker.stop()
        app.close()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"wall_s": round(wall, 3), "per_s": round(n / wall, 1)}


def register_only(db_url: str, data: Path, n: int) -> dict:
    """The producer alone: scan + validation + registration into SQL, no broker (send=False)."""
    from sa2va_queue.db.session import upgrade_schema

    upgrade_schema(db_url)
    code = (
        "import sys,time,resource;from pathlib import Path;"
        "from sa2va_queue.core.settings import Settings;"
        "from sa2va_queue.producer.dataset import DatasetScan;from sa2va_queue.producer.enqueue import enqueue_frames;"
        f"s=Settings.load(environ={{}},database_url={db_url!r},broker_url='redis://127.0.0.1:6379/15');"
        "t=time.perf_counter();"
        f"p=enqueue_frames(s,DatasetScan(Path({str(data)!r})).frames(),model='noop',run_name='reg',send=False);"
        "w=time.perf_counter()-t;"
        "print(len(p.job_ids),w,resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    registered, wall, rss_kb = int(out[0]), float(out[1]), int(out[2])
    assert registered == n, (registered, n)
    return {"frames": n, "wall_s": round(wall, 2), "per_s": round(n / wall, 1), "peak_rss_mib": round(rss_kb / 1024, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--size", type=int, default=64, help="frame side in pixels")
    parser.add_argument("--gt", action="store_true", help="write a ground-truth mask per frame")
    parser.add_argument("--database", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/8")
    parser.add_argument("--concurrency", type=int, default=32, help="worker threads, both apps")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--register-only", action="store_true", help="measure the producer alone")
    parser.add_argument("--repeats", type=int, default=3, help="bare/whole pairs per database (median ratio)")
    args = parser.parse_args()
    from sa2va_queue.db.scratch import scratch_postgres

    tmp = Path(tempfile.mkdtemp(prefix="sa2va-bench-"))
    data = write_frames(tmp / "frames", args.frames, args.size, args.gt)
    kinds = ["sqlite", "postgresql"] if args.database == "both" else [args.database]
    for kind in kinds:
        with ExitStack() as stack:
            db_url = (f"sqlite:///{tmp / f'{kind}-{time.time_ns()}.sqlite'}" if kind == "sqlite"
                      else stack.enter_context(scratch_postgres(ADMIN_PG, "sa2va_bench")))
            out = {"benchmark": "queue_overhead", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                   "machine": f"{platform.node()} {platform.machine()}", "cpu_count": os.cpu_count(),
                   "database": kind, "frames": args.frames, "size": args.size, "ground_truth": args.gt,
                   "concurrency": args.concurrency, "max_batch_size": args.max_batch_size}
            if args.register_only:
                out["producer"] = register_only(db_url, data, args.frames)
            else:
                # pairs taken back to back: the VM's speed drifts by tens of per cent over minutes,
                # so each ratio compares two measurements seconds apart, and the median summarises
                pairs = []
                for _ in range(args.repeats):
                    bare = bare_celery(args.redis_url, args.frames, args.concurrency)
                    whole = whole_path(args.redis_url, db_url, data, tmp, args.frames, args.concurrency,
                                       args.max_batch_size)
                    pairs.append({"bare_celery": bare, "whole_path": whole,
                                  "ratio": round(whole["per_s"] / bare["per_s"], 3)})
                out["pairs"] = pairs
                out["ratio_median"] = float(np.median([p["ratio"] for p in pairs]))
                out["whole_path_per_s_median"] = float(np.median([p["whole_path"]["per_s"] for p in pairs]))
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
