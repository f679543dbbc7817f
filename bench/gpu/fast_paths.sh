#!/usr/bin/env bash
# The model stage's fast paths on the GPU machine, in one call: bench/gpu/fast_paths.py for the
# shapes in $SHAPES at batch $B (JSON to stdout and $OUT/fast_paths.jsonl), then the Sa2VA GPU tests.
# $BIG (e.g. Sa2VA-26B): a further shape, only the `fast` configuration, if the call has time left.
#
# Here:   .venv/bin/python bench/gpu/build_bundle.py
# Device: run(command="bash bench/gpu/fast_paths.sh", carry=[".gpu-bundle"], timeout_s=600)
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
SHAPES=${SHAPES:-Sa2VA-1B,Sa2VA-8B}
CONFIGS=${CONFIGS:-steps_eager,onepass_eager,onepass_compiled_sam,onepass_compiled,fast}
B=${B:-32}
PY=${PY:-python3}
WORK=${WORK:-/tmp/sa2va-fast}
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1
mkdir -p "$WORK"
pipi() { $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }
pipi --target "$WORK/deps" .gpu-bundle/wheels/*.whl || exit 1
pipi --no-build-isolation --target "$WORK/new" "$REPO" || exit 1
export PYTHONPATH=$WORK/new:$WORK/deps
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"

timeout ${FAST_TIMEOUT:-330} $PY bench/gpu/fast_paths.py --shapes "$SHAPES" --batch "$B" --configs "$CONFIGS" \
  2> "${OUT:-$WORK}/fast_paths.err" | tee -a "${OUT:-$WORK}/fast_paths_all.jsonl" | grep -v "^{\"partial\""; tail -n 5 "${OUT:-$WORK}/fast_paths.err"

# from a copy of the tests: the checkout's sa2va_queue/ folder would shadow the installed package
rm -rf "$WORK/t" && mkdir -p "$WORK/t" && cp -r tests pyproject.toml "$WORK/t/"
[ -n "${SKIP_TESTS:-}" ] || (cd "$WORK/t" && timeout ${TEST_TIMEOUT:-150} $PY -m pytest -q -p no:cacheprovider \
  tests/unit/test_sa2va_pixels.py tests/unit/test_sa2va_model.py -k "cuda or gpu or batched or bits" 2>&1 | tail -n 8)

left=$(( ${BUDGET_S:-560} - ($(date +%s) - START) ))
if [ -n "${BIG:-}" ] && [ "$left" -gt 150 ]; then
  echo "big shape $BIG with ${left}s left"
  timeout $((left - 10)) $PY bench/gpu/fast_paths.py --shapes "$BIG" --batch "$B" --configs fast --no-sam \
    2>> "${OUT:-$WORK}/fast_paths.err" | grep -v '^{"partial"'
fi
echo "call took $(( $(date +%s) - START ))s"
