"""SAM2 image features as the worker computes them (modeling.sam_features under bf16 autocast,
compiled as Sa2VAPipeline compiles it), ms per image at one batch size, per torch.compile mode.
Random bf16 Hiera-L weights, random 1024 px input. One JSON line per mode, then a summary.

    python3 bench/gpu/sam_compile_modes.py --batch 32 --modes default,max-autotune-no-cudagraphs

`default` is what `SA2VA_COMPILE=1` uses; the other modes autotune GEMM kernels (with their GELU /
bias epilogues fused) and take minutes to compile. `max_abs` is each mode's largest difference from
the eager features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sam_variants import autocast_features, random_sam, timed  # noqa: E402  (the other SAM2 benches)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--modes", default="default,max-autotune-no-cudagraphs")
    args = ap.parse_args()

    from sa2va_queue.worker.backends.sa2va import modeling
    from sa2va_queue.worker.backends.sa2va.pipeline import _compile

    sam, x = random_sam(args.batch, input_dtype=torch.float32)

    def features(fn):
        return autocast_features(sam, fn)

    base = {"benchmark": "sam_compile_modes", "batch": args.batch, "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__}
    eager = features(modeling.sam_features)
    ref = [t.float() for t in eager(x)]
    results = {"eager": round(timed(eager, x, args.repeats) * 1000 / args.batch, 2)}
    print(json.dumps({**base, "mode": "eager", "ms_per_image": results["eager"]}), flush=True)
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        fn = _compile(modeling.sam_features) if mode == "default" else torch.compile(modeling.sam_features, mode=mode)
        f = features(fn)
        t = time.perf_counter()
        out = [t_.float() for t_ in f(x)]
        torch.cuda.synchronize()
        compile_s = time.perf_counter() - t
        results[mode] = round(timed(f, x, args.repeats) * 1000 / args.batch, 2)
        diff = max(float((a - b).abs().max()) for a, b in zip(out, ref))
        print(json.dumps({**base, "mode": mode, "ms_per_image": results[mode], "compile_s": round(compile_s, 1),
                          "max_abs_vs_eager": diff}), flush=True)
    print(json.dumps({**base, "summary": True, "ms_per_image": results}), flush=True)


if __name__ == "__main__":
    main()
