"""Where a timed `run` spent its wall time, from the job rows: one JSON line.

    python bench/queue_timeline.py --db data/sa2va-queue.sqlite --run timed --t0 T0 --t1 T1 \
        [--stage-images-per-s 100 | --stage-jsonl model.jsonl] [--batch 32] [--label key=value ...]

T0 / T1: the wall clock (epoch seconds) when the `run` command started and returned. From the rows:

- `before_first_enqueued_s`: start-up, scan and registration until the first job was sent;
- `segmentation_span_s`: first job enqueued to last job finished;
- `after_last_finished_s`: the last poll, the report and the exit;
- `model_busy_s`: the sum of each batch's compute time (every job row carries its batch's size and
  compute time, so a batch counts once); `model_busy_share` of the segmentation span, the rest is
  the model waiting for input (or for the host between batches);
- with the model stage's images/s alone (given, or read at `--batch` from the summary line of
  `bench/batching.py model`, whose device and versions are copied too): `compute_ms_per_batch` in the queue against the stage's
  (slower in the queue: the host threads slowed the model's own thread).
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from sqlalchemy import create_engine, text


def timeline(url: str, run: str, t0: float, t1: float, stage: float | None, batch: int | None) -> dict:
    engine = create_engine(url if "://" in url else f"sqlite:///{url}")
    with engine.connect() as conn:
        jobs = conn.execute(text(
            "select min(j.enqueued_at), min(j.started_at), max(j.finished_at), count(j.finished_at), count(*) "
            "from jobs j join runs r on r.id = j.run_id where r.name = :run"), {"run": run}).one()
        preds = conn.execute(text(
            "select p.batch_size, p.compute_ms from predictions p join jobs j on j.id = p.job_id "
            "join runs r on r.id = j.run_id where r.name = :run"), {"run": run}).all()
        statuses = dict(conn.execute(text(
            "select j.status, count(*) from jobs j join runs r on r.id = j.run_id where r.name = :run "
            "group by j.status"), {"run": run}).all())
    first_enq, first_start, last_done, finished, total = jobs

    def epoch(value) -> float:
        value = datetime.fromisoformat(value) if isinstance(value, str) else value
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()

    out: dict = {"run": run, "jobs": total, "finished": finished, "statuses": {str(k): v for k, v in statuses.items()},
                 "wall_s": round(t1 - t0, 2), "frames_per_s": round(total / (t1 - t0), 2)}
    if first_enq is None or last_done is None:
        return out
    span = epoch(last_done) - epoch(first_enq)
    out.update(before_first_enqueued_s=round(epoch(first_enq) - t0, 2),
               first_enqueued_to_first_started_s=round(epoch(first_start) - epoch(first_enq), 2),
               segmentation_span_s=round(span, 2), segmentation_frames_per_s=round(finished / span, 2),
               after_last_finished_s=round(t1 - epoch(last_done), 2))
    if preds:
        batches = sum(1.0 / b for b, _ in preds)
        busy = sum(c / b for b, c in preds) / 1000.0
        out.update(batches=round(batches), mean_batch_size=round(len(preds) / batches, 2),
                   model_busy_s=round(busy, 2), model_busy_share=round(busy / span, 3),
                   compute_ms_per_batch=round(busy * 1000.0 / batches, 1))
    if stage:
        out["model_stage_images_per_s"] = stage
        out["run_over_model_stage"] = round(out["frames_per_s"] / stage, 3)
        out["segmentation_over_model_stage"] = round(out["segmentation_frames_per_s"] / stage, 3)
        if batch:
            out["model_stage_ms_per_batch"] = round(batch / stage * 1000.0, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", required=True, help="SQLAlchemy URL, or the path of a SQLite file")
    ap.add_argument("--run", required=True)
    ap.add_argument("--t0", type=float, required=True)
    ap.add_argument("--t1", type=float, required=True)
    ap.add_argument("--stage-images-per-s", type=float)
    ap.add_argument("--stage-jsonl", help="output of bench/batching.py model: its summary line")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--label", action="append", default=[], help="key=value copied into the output")
    args = ap.parse_args()
    stage, extra = args.stage_images_per_s, {}
    if args.stage_jsonl:
        lines = [json.loads(line) for line in open(args.stage_jsonl) if line.startswith("{")]
        summary = next((r for r in lines if r.get("summary")), {})
        stage = stage or summary.get("images_per_s", {}).get(str(args.batch))
        extra = {k: summary[k] for k in ("date", "device", "torch", "transformers") if k in summary}
    out = timeline(args.db, args.run, args.t0, args.t1, stage, args.batch)
    print(json.dumps({**dict(kv.split("=", 1) for kv in args.label), **extra, **out}))


if __name__ == "__main__":
    main()
