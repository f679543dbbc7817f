"""The model stage's fast paths, one at a time, on one GPU: images/s at batch B and latency at batch 1
for each configuration, SAM2 image features alone (eager and compiled), a stage breakdown with the
profiler's kernel time, and how far each configuration's masks move from the step-by-step eager
path (the computation the official code does). One JSON object per shape on stdout (and appended
to $OUT/fast_paths.jsonl when OUT is set).

Configurations (`Sa2VAPipeline` attributes, the same weights and frames):
    steps_eager          KV-cached step-by-step decoding of the scripted answer (one host sync per
                         token), SAM2 eager after the language model: the computation before the
                         fast paths (one_pass=False)
    onepass_eager        the scripted answer in one forward with the prompt (modeling.generate)
    onepass_compiled_sam + SAM2 image features through torch.compile
    onepass_compiled     + the language model's RMSNorms and SiLU gates compiled
    fast                 + SAM2 image features on a side stream, beside the vision tower and the LLM
                         (the defaults with the worker's SA2VA_COMPILE=1)

Mask agreement: each configuration against the first (steps_eager), and the noise floor of the
first: its batch-B masks against the same frames one by one (the first 8).

    python3 bench/gpu/fast_paths.py --shapes Sa2VA-1B,Sa2VA-8B --batch 32
    python3 bench/gpu/fast_paths.py --spec 'sa2va:tiny?force_answer=Sure%2C%20%5BSEG%5D.' --batch 4   # dry run, CPU
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/gpu/

import numpy as np  # noqa: E402
import torch  # noqa: E402

from batching import (  # noqa: E402
    DEFAULT_PROMPT, FORCE_ANSWER, apply_transformers_compat, build_reference, load_images, now_iso, versions,
)
from profile_model import (Stages, kernel_profile, kernel_time_by_stage, measure, stage_wall_ms,  # noqa: E402
                           sync)

CONFIGS = {
    "steps_eager": dict(one_pass=False, overlap_sam=False, compile_sam=False, compile_llm=False),
    "onepass_eager": dict(one_pass=True, overlap_sam=False, compile_sam=False, compile_llm=False),
    "onepass_compiled_sam": dict(one_pass=True, overlap_sam=False, compile_sam=True, compile_llm=False),
    "onepass_compiled": dict(one_pass=True, overlap_sam=False, compile_sam=True, compile_llm=True),
    "fast": dict(one_pass=True, overlap_sam=True, compile_sam=True, compile_llm=True),
}


def configure(pipe, name: str) -> None:
    for key, value in CONFIGS[name].items():
        setattr(pipe, key, value)


def masks(backend, batch) -> list[np.ndarray]:
    return [r.probability for r in backend.predict(batch)]


def agreement(a: list[np.ndarray], b: list[np.ndarray]) -> dict:
    ious, diffs = [], []
    for x, y in zip(a, b):
        mx, my = x > 0.5, y > 0.5
        union = np.logical_or(mx, my).sum()
        ious.append(float(np.logical_and(mx, my).sum() / union) if union else 1.0)
        diffs.append(float(np.abs(x - y).max()))
    return {"min_iou": round(min(ious), 5), "mean_iou": round(float(np.mean(ious)), 5),
            "max_prob_diff": round(max(diffs), 5), "mean_fg": round(float(np.mean([x.mean() for x in a])), 3)}


def sam_alone(pipe, prepared, repeats: int) -> dict:
    """SAM2 image features of the batch alone (under the pipeline's precision), eager and compiled."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    dev = next(pipe.model.grounding_encoder.parameters()).device
    out = {}
    variants = [("eager", False, None), ("compiled", True, None)]
    variants += [(f"eager_{b.name.lower()}", False, b) for b in
                 (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION)]
    for name, compiled, backend in variants:
        pipe.compile_sam = compiled
        pipe._uploads = {}
        try:
            x = pipe._sam_input(prepared, dev)
            kernel = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
            with torch.no_grad(), pipe._sam_precision(), kernel:
                for _ in range(2):
                    pipe._sam_features(x)
                sync()
                t = time.perf_counter()
                for _ in range(repeats):
                    pipe._sam_features(x)
                sync()
        except Exception as exc:
            out[f"{name}_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        finally:
            pipe._uploads = None
        out[f"{name}_ms_per_image"] = round((time.perf_counter() - t) * 1000 / repeats / len(prepared), 2)
    return out


def run_shape(args, label: str, backend) -> dict:
    pipe = backend.pipeline
    from sa2va_queue.worker.backends.base import SegmentationRequest

    images = load_images(args.batch, 512, None, 0)
    prepared = [backend.preprocess(SegmentationRequest(f"img{i}", im, DEFAULT_PROMPT)) for i, im in enumerate(images)]
    cuda = torch.cuda.is_available()
    rec: dict = {"benchmark": "fast_paths", "model": label, "date": now_iso(),
                 "device": torch.cuda.get_device_name(0) if cuda else "cpu", **versions(), "batch": args.batch}
    ref = None
    results = {}
    seen: dict[str, list] = {}
    for name in args.configs:
        r: dict = {}
        try:
            configure(pipe, name)
            t = time.perf_counter()
            got = masks(backend, prepared)  # first call: compiles where the configuration does
            sync()
            r["first_call_s"] = round(time.perf_counter() - t, 1)
            r["throughput"] = measure(backend, prepared, args.batch, args.repeats, 1)
            t = time.perf_counter()
            backend.predict(prepared[:1])
            sync()
            r["first_b1_call_s"] = round(time.perf_counter() - t, 1)
            r["latency_b1"] = measure(backend, prepared, 1, args.repeats * 2, 1)
            if ref is None:
                ref = got
                singles = [masks(backend, [p])[0] for p in prepared[:8]]
                r["noise_floor_one_by_one_vs_batch"] = agreement(singles, got[:8])
            else:
                r["vs_" + args.configs[0]] = agreement(got, ref)
            if name == "onepass_compiled" and "onepass_eager" in seen:
                r["vs_onepass_eager"] = agreement(got, seen["onepass_eager"])
            seen[name] = got
        except Exception as exc:  # one configuration failing must not cost the others
            r["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        results[name] = r
        print(json.dumps({"partial": label, name: r}), flush=True)
    rec["configs"] = results
    if cuda and not args.no_sam:
        try:
            rec["sam_image_features_alone"] = sam_alone(pipe, prepared, args.repeats)
        except Exception as exc:
            rec["sam_image_features_alone"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    # where the time goes in the compiled configuration without the side stream (the stage timers
    # synchronise, which would serialise the overlap anyway)
    if not args.no_profile:
        try:
            configure(pipe, "onepass_compiled")
            stages = Stages(pipe)
            try:
                rec["stage_wall_ms_onepass_compiled"] = stage_wall_ms(backend, prepared, stages)
                if cuda:
                    rec["kernels_onepass_compiled"] = kernel_time_by_stage(kernel_profile(backend, prepared, stages))
            finally:
                stages.close()
        except Exception as exc:
            rec["profile_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    if cuda:
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    return rec


def emit(rec: dict) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(Path(out) / "fast_paths.jsonl", "a") as f:
            f.write(line + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="Sa2VA-1B,Sa2VA-8B")
    ap.add_argument("--spec", default=None, help="a sa2va spec instead of --shapes (dry runs: sa2va:tiny?...)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--configs", default=",".join(CONFIGS), help="first one is the reference for mask agreement")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--no-sam", action="store_true")
    args = ap.parse_args()
    args.configs = [c for c in args.configs.split(",") if c]
    unknown = set(args.configs) - set(CONFIGS)
    if unknown:
        raise SystemExit(f"unknown configs {sorted(unknown)}; known: {', '.join(CONFIGS)}")
    compat = apply_transformers_compat(True)
    if args.spec:
        from sa2va_queue.worker.backends import build_model

        backend = build_model(args.spec)
        backend.setup(None)
        emit({**run_shape(args, args.spec, backend), "compat": compat})
        return
    for shape in [s for s in args.shapes.split(",") if s]:
        t = time.perf_counter()
        backend = build_reference(shape, "cuda", "bf16", seed=0, force_answer=FORCE_ANSWER, max_new_tokens=2048,
                                  max_tiles=12)
        build_s = round(time.perf_counter() - t, 1)
        emit({**run_shape(args, f"reference:{shape} (random, bf16)", backend), "build_s": build_s, "compat": compat})
        del backend
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


if __name__ == "__main__":
    main()
