#!/usr/bin/env bash
# Sa2VA-26B load time from local disk on the GPU machine, in one call: bench/gpu/load_time.py writes a
# random folder of the published shape (52 GB bf16, 11 shards) to local disk, then times the worker's
# setup (checkpoint.load_folder + pipeline) and its checkpoint hash, cold (page cache evicted) and warm,
# and the last commit's loader warm. JSON lines to $OUT/load_time.jsonl.
#
# Here:   mkdir -p .parity/old && git show HEAD:worker/backends/sa2va/checkpoint.py > .parity/old/checkpoint_before.py
# Device: run(command="bash bench/gpu/load_time.sh", carry=[".parity/old"])
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PY:-python3}
WORK=${WORK:-/tmp/sa2va-load}
RESULTS=${OUT:-$WORK}
FOLDER=${FOLDER:-/tmp/sa2va-26b}
REFERENCE=${REFERENCE:-Sa2VA-26B}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$RESULTS"
t0=$(date +%s)
rm -rf /tmp/sa2va-parity/real/*/model  # model folders an earlier parity call left
# this checkout, installed by parity_real.sh on this machine, if its loader is this checkout's
PKG=/tmp/sa2va-parity/pkg
if ! cmp -s "$PKG/sa2va_queue/worker/backends/sa2va/checkpoint.py" worker/backends/sa2va/checkpoint.py; then
  PKG=$WORK/pkg
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --no-build-isolation \
    --target "$PKG" "$REPO" || exit 1
fi
df -h /tmp /dev/shm | sed 's/^/disk: /'
STEPS=${STEPS:-new-cold,new-warm,old-warm}
avail=$(df -BG --output=avail "$(dirname "$FOLDER")" | tail -1 | tr -dc 0-9)
if [ "${avail:-0}" -lt 54 ]; then  # no room for 52 GB on disk: tmpfs, which measures the loader warm only
  echo "only ${avail} GiB free beside $FOLDER: folder on /dev/shm (RAM), no cold measurement"
  FOLDER=/dev/shm/sa2va-26b
  STEPS=${STEPS//new-cold,/}
fi
OLD=()
[ -f .parity/old/checkpoint_before.py ] && OLD=(--old "$REPO/.parity/old/checkpoint_before.py")
(cd "$WORK" && PYTHONPATH=$PKG timeout "${LOAD_TIMEOUT:-520}" $PY "$REPO/bench/gpu/load_time.py" \
  --reference "$REFERENCE" --folder "$FOLDER" --write "${OLD[@]}" --steps "$STEPS" \
  --timeout "${STEP_TIMEOUT:-150}" --out "$RESULTS/load_time.jsonl")
rc=$?
rm -rf "$FOLDER"
echo "load_time rc $rc, $(( $(date +%s) - t0 )) s"
exit $rc
