"""SAM2 Hiera-L image encoder alone (random bf16 weights), ms per image at one batch size, under
variants: transformers' attention vs the fused one (modeling.use_fused_hiera_attention), bf16
autocast (as the official code) vs plain bf16, channels-last input, torch.compile. One JSON object.

    python3 bench/gpu/sam_variants.py --batch 32 [--compile]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch


def timed(fn, x, repeats: int) -> float:
    for _ in range(2):
        fn(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / repeats


def random_sam(batch: int, input_dtype: torch.dtype = torch.bfloat16):
    """(SAM2 Hiera-L with seeded random bf16 weights on CUDA, a random 1024 px batch)."""
    from transformers import Sam2Model

    from sa2va_queue.worker.backends.sa2va.config import _build_sam2_config

    torch.manual_seed(0)
    sam = Sam2Model(_build_sam2_config(None)).to("cuda", torch.bfloat16).eval()
    return sam, torch.randn(batch, 3, 1024, 1024, device="cuda", dtype=input_dtype)


def autocast_features(sam, fn):
    """`fn(sam, x)` (modeling.sam_features or a compiled one) as the pipeline calls it: no grad,
    bf16 autocast on CUDA."""
    @torch.no_grad()
    def f(inp):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return fn(sam, inp)
    return f


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    from sa2va_queue.worker.backends.sa2va.modeling import use_fused_hiera_attention

    sam, x = random_sam(args.batch)
    auto = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731
    plain = contextlib.nullcontext

    def run(ctx):
        @torch.no_grad()
        def f(inp):
            with ctx():
                return sam.get_image_features(inp).fpn_hidden_states
        return f

    out: dict = {"benchmark": "sam_variants", "batch": args.batch, "device": torch.cuda.get_device_name(0),
                 "torch": torch.__version__}
    ms = lambda s: round(s * 1000 / args.batch, 2)  # noqa: E731
    out["library_attention_autocast"] = ms(timed(run(auto), x, args.repeats))
    ref = [f.float() for f in run(auto)(x)]
    out["fused_blocks"] = use_fused_hiera_attention(sam)
    out["fused_attention_autocast"] = ms(timed(run(auto), x, args.repeats))
    fused = [f.float() for f in run(auto)(x)]
    out["fused_vs_library_max_abs"] = max(float((a - b).abs().max()) for a, b in zip(fused, ref))
    out["fused_attention_plain_bf16"] = ms(timed(run(plain), x, args.repeats))
    bare = [f.float() for f in run(plain)(x)]
    out["plain_vs_autocast_max_abs"] = max(float((a - b).abs().max()) for a, b in zip(bare, fused))
    out["plain_equals_autocast"] = all(torch.equal(a, b) for a, b in zip(bare, fused))
    xc = x.contiguous(memory_format=torch.channels_last)
    out["fused_autocast_channels_last_input"] = ms(timed(run(auto), xc, args.repeats))
    print(json.dumps(out), flush=True)
    if args.compile:
        enc = sam.vision_encoder
        t = time.perf_counter()
        sam.vision_encoder = torch.compile(enc, dynamic=False)
        run(auto)(x)
        torch.cuda.synchronize()
        out["compile_s"] = round(time.perf_counter() - t, 1)
        out["compiled_fused_autocast"] = ms(timed(run(auto), x, args.repeats))
        comp = [f.float() for f in run(auto)(x)]
        out["compiled_vs_fused_max_abs"] = max(float((a - b).abs().max()) for a, b in zip(comp, fused))
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
