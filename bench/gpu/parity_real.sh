#!/usr/bin/env bash
# Parity at the published 1B / 8B shapes, bf16 on CUDA, against the official remote code, in one call:
# bench/parity_official.py --reference (random weights of the real shape, both sides on the same
# bf16 values; ours one pass, step by step and batched; official predict_forward per image).
# The official side runs on transformers 4.57.6 (+ tokenizers 0.22.1, huggingface_hub 0.36.0, which
# 4.57 accepts; the image's tokenizers 0.23 / hub 1.x fail its import check) and, for the
# InternLM2-based 8B, transformers 4.49.0 + tokenizers 0.21.4 in front (4.50+ breaks the official
# InternLM2 code); each in its own --target folder, on PYTHONPATH of the official subprocess only.
# Our side needs no wheels: sa2va_queue.worker.backends.sa2va imports none of celery/redis/sqlalchemy.
# TRUTH=fp32 (default; TRUTH=none: off) adds --truth fp32: the official code once more in fp32 on the
# same folder and cases (bf16 weights upcast exactly, SAM2 autocast off, TF32 off), and per shape
# summary.vs_fp32_truth: the official bf16 run and ours (each decode mode) against it (min IoU, max /
# mean probability difference, pixels flipped). Costs one more official load + predict_forward per
# shape (fp32: 2x the weight memory; the 8B's is ~32 GB); PARITY_TIMEOUT defaults to 540 s with it.
#
# Here (once; .parity/ is ignored, nothing of it is committed):
#   mkdir -p .parity/official && for f in $(git -C <Sa2VA checkout> ls-tree --name-only HEAD projects/sa2va/hf/models/); do
#       git -C <Sa2VA checkout> show HEAD:$f > .parity/official/$(basename $f); done
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
#      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
#   python3 -m pip download $P -d .parity/wheels-official transformers==4.57.6 tokenizers==0.22.1 huggingface_hub==0.36.0
#   python3 -m pip download $P -d .parity/wheels-internlm2 transformers==4.49.0 tokenizers==0.21.4
# Device: run(command="bash bench/gpu/parity_real.sh",
#             carry=[".parity/official", ".parity/wheels-official", ".parity/wheels-internlm2"])
# Writes $OUT/parity_real.json (full report) and the official log of a model whose official side failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PY:-python3}
WORK=${WORK:-/tmp/sa2va-parity}
RESULTS=${OUT:-$WORK}
REFS=${REFS:-Sa2VA-1B,Sa2VA-8B}
DECODE=${DECODE:-one-pass,steps}
BATCH=${BATCH:-4}
CASES=${CASES:-2}  # more (e.g. 8) to rank ours and the official run against the fp32 truth
TRUTH=${TRUTH:-fp32}
export PYTHONUNBUFFERED=1
mkdir -p "$WORK" "$RESULTS"
pipi() { $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "$@"; }

t0=$(date +%s)
pipi --target "$WORK/site" .parity/wheels-official/*.whl || exit 1
# the InternLM2-based shapes (8B, 26B) only: a 1B-only call need not carry .parity/wheels-internlm2
INTERNLM2=(); case "$REFS" in *8B*|*26B*)
  pipi --target "$WORK/site-internlm2" .parity/wheels-internlm2/*.whl || exit 1
  INTERNLM2=(--site-internlm2 "$WORK/site-internlm2");; esac
pipi --no-build-isolation --target "$WORK/pkg" "$REPO" || exit 1
echo "installed in $(( $(date +%s) - t0 )) s"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
df -h / /tmp /dev/shm | sed 's/^/disk: /'; free -g | sed 's/^/mem: /'; echo "cpus: $(nproc)"
if [ -n "${DISK_PROBE:-}" ]; then  # local disk throughput: 4 GiB written + fsync, evicted, read back
$PY - <<'EOF2'
import os, time
p, n, blk = "/tmp/disk_probe.bin", 64, bytearray(64 << 20)
t = time.perf_counter()
with open(p, "wb") as f:
    for _ in range(n):
        f.write(blk)
    f.flush(); os.fsync(f.fileno())
w = time.perf_counter() - t
fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)
t = time.perf_counter()
with open(p, "rb", buffering=0) as f:
    while f.readinto(blk):
        pass
r = time.perf_counter() - t
os.unlink(p)
print(f"disk probe: write+fsync {n / 16 / w:.2f} GiB/s, cold read {n / 16 / r:.2f} GiB/s (one thread)")
EOF2
fi
(cd "$WORK" && PYTHONPATH=$WORK/site $PY -c "import transformers, tokenizers, huggingface_hub, peft, timm, torchvision
print('official env', transformers.__version__, tokenizers.__version__, huggingface_hub.__version__, peft.__version__, timm.__version__, torchvision.__version__)")
[ ${#INTERNLM2[@]} = 0 ] || (cd "$WORK" && PYTHONPATH=$WORK/site-internlm2:$WORK/site $PY -c "import transformers, tokenizers
print('official env (InternLM2)', transformers.__version__, tokenizers.__version__)")

# from $WORK: the checkout's sa2va_queue/ folder must not shadow the installed package
parity() {  # label, references, --logit-scale, seconds
  (cd "$WORK" && PYTHONPATH=$WORK/pkg timeout "$4" $PY "$REPO/bench/parity_official.py" \
    --official-dir "$REPO/.parity/official" --site "$WORK/site" "${INTERNLM2[@]}" \
    --device cuda --dtype bf16 --reference "$2" --logit-scale "$3" --decode "$DECODE" --batch "$BATCH" --truth "$TRUTH" --cases "$CASES" \
    --out "$WORK/$1" > "$WORK/$1.stdout")
  local rc=$?
  cp "$WORK/$1/parity.json" "$RESULTS/parity_$1.json" 2>/dev/null
  for d in "$WORK/$1"/*/; do  # the official side's log, when it failed
    [ -f "$d/official.json" ] || { [ -f "$d/official.log" ] && tail -c 3000 "$d/official.log" > "$RESULTS/official_$1_$(basename "$d").log"; }
    [ -f "$d/truth/official.log" ] && [ ! -f "$d/truth/official.json" ] && tail -c 3000 "$d/truth/official.log" > "$RESULTS/truth_$1_$(basename "$d").log"
  done
  $PY - "$RESULTS/parity_$1.json" <<'EOF2'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except OSError:
    sys.exit("no " + sys.argv[1])
print(json.dumps({"logit_scale": r.get("logit_scale"), "summary": r.get("summary"),
                  "seconds": {k: v.get("seconds") for k, v in r["models"].items()}}))
EOF2
  echo "parity $1 rc $rc, $(( $(date +%s) - t0 )) s so far"
}
# the reference weights as drawn (their low-res mask logits are already in a trained model's range:
# |logit| <= ~8 on the 1B, measured by --logit-scale on the CPU); LOGIT_SCALE=20 rescales them
[ "$TRUTH" = none ] && T_DEFAULT=420 || T_DEFAULT=540
parity real "$REFS" "${LOGIT_SCALE:-0}" "${PARITY_TIMEOUT:-$T_DEFAULT}"
echo "done in $(( $(date +%s) - t0 )) s"
