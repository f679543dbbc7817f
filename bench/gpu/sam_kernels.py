"""SAM2 image features as the worker computes them (modeling.sam_features, bf16 autocast, compiled
as SA2VA_COMPILE=1 compiles it), per trunk variant: ms per image, the largest difference from the
eager library-order features, and the torch profiler's GPU kernel time per batch by kind (GEMM,
attention, convolution, inductor's fused Triton kernels, copies, other) with the top kernels.
Random bf16 Hiera-L weights, random 1024 px input. One JSON line per variant, then a summary.

    python3 bench/gpu/sam_kernels.py --batch 32 --variants library,window_major,window_major_math

Variants:
  library            transformers' block order: partition / un-partition copies in every windowed block
  window_major       hiera.trunk_stages: tokens stay in window order between blocks
  window_major_math  as window_major, with windows of at most --math-max-tokens tokens attended by
                     explicit matmul + softmax + matmul (inductor fuses the softmax; SDPA kernels
                     run small windows with head dim 72 poorly)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sam_variants import autocast_features, random_sam, timed  # noqa: E402  (the other SAM2 benches)

KINDS = [  # first match wins
    ("attention", re.compile(r"flash|fmha|attention|sdpa|cudnn_generated|softmax", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|sm90|cublas|matmul", re.I)),
    ("convolution", re.compile(r"conv|implicit", re.I)),
    ("triton", re.compile(r"^triton_", re.I)),
    ("copy", re.compile(r"copy|memcpy|memset|cat|elementwise", re.I)),
]


def kind_of(name: str) -> str:
    return next((k for k, rx in KINDS if rx.search(name)), "other")


def math_attention(max_tokens: int):
    """Sam2MultiScaleAttention.forward (as modeling._hiera_attention) with windows of at most
    `max_tokens` tokens attended by plain matmuls and a softmax in fp32."""
    from sa2va_queue.worker.backends.sa2va.modeling import _hiera_attention

    def forward(self, hidden_states, **kwargs):
        b, h, w, _ = hidden_states.shape
        if h * w > max_tokens:
            return _hiera_attention(self, hidden_states)
        qkv = self.qkv(hidden_states).reshape(b, h * w, 3, self.num_attention_heads, -1)
        query, key, value = torch.unbind(qkv.permute(2, 0, 3, 1, 4), 0)  # each (b, heads, n, d)
        if self.query_stride:
            heads, d = query.shape[1], query.shape[-1]
            q = query.transpose(1, 2).reshape(b, h, w, heads * d).permute(0, 3, 1, 2)
            q = F.max_pool2d(q, kernel_size=self.query_stride, stride=self.query_stride)
            h, w = q.shape[-2:]
            query = q.permute(0, 2, 3, 1).reshape(b, h * w, heads, d).transpose(1, 2)
        scores = (query @ key.transpose(-1, -2)).float() * self.scale
        out = scores.softmax(-1).to(value.dtype) @ value
        return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))

    return forward


def profile(fn, x, iters: int = 3) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn(x)
        torch.cuda.synchronize()
    per_kernel: dict[str, float] = defaultdict(float)
    for ev in prof.key_averages():
        t = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if t and ev.key and not ev.key.startswith("ProfilerStep"):
            per_kernel[ev.key] += t / 1000 / iters  # ms per batch
    by_kind: dict[str, float] = defaultdict(float)
    for name, ms in per_kernel.items():
        by_kind[kind_of(name)] += ms
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1])[:15]
    return {"gpu_ms_per_batch": round(sum(per_kernel.values()), 1),
            "by_kind_ms": {k: round(v, 1) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "top_kernels_ms": [[n[:90], round(ms, 2)] for n, ms in top]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--variants", default="library,window_major,window_major_math")
    ap.add_argument("--math-max-tokens", type=int, default=256)
    ap.add_argument("--no-profile", action="store_true")
    args = ap.parse_args()

    from sa2va_queue.worker.backends.sa2va import modeling
    from sa2va_queue.worker.backends.sa2va.pipeline import _compile

    sam, x = random_sam(args.batch, input_dtype=torch.float32)
    modeling.use_fused_hiera_attention(sam)  # as the pipeline loads it

    def features(fn):
        return autocast_features(sam, fn)

    def library(s, inp):
        return modeling.sam_features(s, inp)

    def window_major(s, inp):
        return modeling.sam_features(s, inp, window_major=True)

    base = {"benchmark": "sam_kernels", "batch": args.batch, "device": torch.cuda.get_device_name(0),
            "torch": torch.__version__}
    ms = lambda s: round(s * 1000 / args.batch, 2)  # noqa: E731
    eager = features(library)
    ref = [t.float() for t in eager(x)]
    summary = {"eager_library": ms(timed(eager, x, args.repeats))}
    attn_modules = [m for m in sam.modules() if type(m).__name__ == "Sam2MultiScaleAttention"]
    fused_forward = {id(m): m.forward for m in attn_modules}
    for variant in args.variants.split(","):
        for m in attn_modules:
            m.forward = fused_forward[id(m)]
            if variant.endswith("_math"):
                m.forward = types.MethodType(math_attention(args.math_max_tokens), m)
        fn = window_major if variant.startswith("window_major") else library
        row = {**base, "variant": variant, "eager_ms_per_image": ms(timed(features(fn), x, args.repeats))}
        torch._dynamo.reset()
        f = features(_compile(fn))
        t = time.perf_counter()
        out = [o.float() for o in f(x)]
        torch.cuda.synchronize()
        row["compile_s"] = round(time.perf_counter() - t, 1)
        row["compiled_ms_per_image"] = summary[variant] = ms(timed(f, x, args.repeats))
        row["max_abs_vs_eager_library"] = max(float((a - b).abs().max()) for a, b in zip(out, ref))
        row["ref_max_abs"] = max(float(r.abs().max()) for r in ref)
        if not args.no_profile:
            row["compiled_profile"] = profile(f, x)
        print(json.dumps(row), flush=True)
    print(json.dumps({**base, "summary": True, "ms_per_image": summary}), flush=True)


if __name__ == "__main__":
    main()
