"""Where the model stage's time goes at one batch size: images/s, host preprocessing per image,
synchronised wall time per stage, and the torch profiler's GPU kernel time per stage with its top
kernels. One JSON object per model on stdout.

Stages: `inputs` (tiles and SAM2 inputs made on the device, when the pipeline does that), `vision`
(InternViT + projector), `llm_generate` (prefill + decode), `sam_image_features` (the SAM2 image
encoder), `language_embeddings`, `sam_decode`; `other` is the rest of predict (gathering, upsampling
to the frame size, copies to the host, thresholding).

    python3 bench/gpu/profile_model.py --reference Sa2VA-8B --batch 32
    python3 bench/gpu/profile_model.py --reference Sa2VA-1B --batch 32 --no-profile --batch1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/, for batching.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

from batching import (  # noqa: E402
    DEFAULT_PROMPT, FORCE_ANSWER, apply_transformers_compat, build_reference, load_images, now_iso, versions,
)

MODEL_STAGES = {"extract_feature": "vision", "generate": "llm_generate", "sam_image_features": "sam_image_features",
                "language_embeddings": "language_embeddings", "sam_decode": "sam_decode"}
PIPE_STAGES = {"_tiles": "inputs", "_sam_input": "inputs"}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Stages:
    """Wraps the stage methods on the instances (removed by close()): a synchronised timer, and a
    profiler range named after the stage."""

    def __init__(self, pipe) -> None:
        self.acc: dict[str, float] = defaultdict(float)
        self.timing = True
        self.wrapped = []
        for obj, table in ((pipe.model, MODEL_STAGES), (pipe, PIPE_STAGES)):
            for meth, stage in table.items():
                if hasattr(obj, meth):
                    setattr(obj, meth, self._wrap(stage, getattr(obj, meth)))
                    self.wrapped.append((obj, meth))

    def _wrap(self, stage, fn):
        def wrapper(*a, **k):
            with torch.profiler.record_function(f"stage:{stage}"):
                if not self.timing:
                    return fn(*a, **k)
                sync()
                t = time.perf_counter()
                out = fn(*a, **k)
                sync()
                self.acc[stage] += time.perf_counter() - t
                return out
        return wrapper

    def close(self) -> None:
        for obj, meth in self.wrapped:
            delattr(obj, meth)


def kernel_time_by_stage(prof) -> dict:
    """GPU kernel microseconds per stage range (each kernel charged to the stage its launching op
    sits in), with the five longest kernel names of each stage."""
    per: dict[str, float] = defaultdict(float)
    names: dict[str, Counter] = defaultdict(Counter)
    for evt in prof.events():
        kernels = getattr(evt, "kernels", None) or []
        if not kernels:
            continue
        stage, p = "other", evt
        while p is not None:
            if p.name.startswith("stage:"):
                stage = p.name[6:]
                break
            p = p.cpu_parent
        for k in kernels:
            per[stage] += k.duration
            names[stage][k.name[:90]] += k.duration
    total = sum(per.values())
    return {
        "total_kernel_ms": round(total / 1000, 2),
        "stages": {s: {"kernel_ms": round(v / 1000, 2), "share": round(v / total, 3) if total else None,
                       "top": [[n, round(d / 1000, 2)] for n, d in names[s].most_common(5)]}
                   for s, v in sorted(per.items(), key=lambda kv: -kv[1])},
    }


def measure(backend, prepared, b: int, repeats: int, warmup: int) -> dict:
    batch = prepared[:b]
    for _ in range(warmup):
        backend.predict(batch)
    sync()
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        backend.predict(batch)
        sync()
        times.append(time.perf_counter() - t)
    ms = np.array(times) * 1000
    return {"batch_size": b, "ms_per_batch": round(float(ms.mean()), 2), "ms_min": round(float(ms.min()), 2),
            "images_per_s": round(b / (ms.mean() / 1000), 2)}


def stage_wall_ms(backend, batch: list, stages: "Stages") -> dict[str, float]:
    """Wall ms per stage of one timed predict of `batch` (after one untimed), plus other and total."""
    backend.predict(batch)
    stages.acc.clear()
    sync()
    t = time.perf_counter()
    backend.predict(batch)
    sync()
    total = time.perf_counter() - t
    wall = {k: round(v * 1000, 2) for k, v in stages.acc.items()}
    wall["other"] = round((total - sum(stages.acc.values())) * 1000, 2)
    wall["total"] = round(total * 1000, 2)
    return wall


def kernel_profile(backend, batch: list, stages: "Stages"):
    """torch.profiler over one predict of `batch`, the stage timers' syncs switched off."""
    from torch.profiler import ProfilerActivity, profile

    stages.timing = False
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        backend.predict(batch)
        sync()
    return prof


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="Sa2VA-8B")
    ap.add_argument("--spec", default=None, help="a sa2va spec instead of --reference (dry runs: sa2va:tiny?...)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--batch1", action="store_true", help="also time batch 1 (latency)")
    ap.add_argument("--label", default="")
    ap.add_argument("--trace", default=None, help="write the profiler's table of top kernels here")
    args = ap.parse_args()

    compat = apply_transformers_compat(True)
    t = time.perf_counter()
    if args.spec:
        from sa2va_queue.worker.backends import build_model

        backend = build_model(args.spec)
        backend.setup(None)
    else:
        backend = build_reference(args.reference, "cuda", "bf16", seed=0, force_answer=FORCE_ANSWER,
                                  max_new_tokens=2048, max_tiles=12)
    build_s = time.perf_counter() - t
    pipe = backend.pipeline
    from sa2va_queue.worker.backends.base import SegmentationRequest

    images = load_images(args.batch, 512, None, 0)
    reqs = [SegmentationRequest(f"img{i}", im, DEFAULT_PROMPT) for i, im in enumerate(images)]
    backend.preprocess(reqs[0])  # token-id cache, imports
    t = time.process_time()
    prepared = [backend.preprocess(r) for r in reqs]
    preprocess_cpu_ms = (time.process_time() - t) * 1000 / len(reqs)

    rec = {"benchmark": "profile_model", "label": args.label, "date": now_iso(),
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", **versions(),
           "model": args.spec or f"reference:{args.reference} (random, bf16)",
           "build_s": round(build_s, 1), "compat": compat,
           "attn": {n: getattr(getattr(pipe.model, n).config, "_attn_implementation", None)
                    for n in ("vision_tower", "language_model", "grounding_encoder")},
           "preprocess_cpu_ms_per_image": round(preprocess_cpu_ms, 2)}
    backend.predict(prepared[:1])
    rec["throughput"] = measure(backend, prepared, args.batch, args.repeats, args.warmup)
    if args.batch1:
        rec["latency_b1"] = measure(backend, prepared, 1, args.repeats * 2, 1)
    if pipe.sam_autocast:  # the same with SAM2 in plain bf16 (spec option sam_autocast=0): faster, other bits
        pipe.sam_autocast = False
        rec["throughput_sam_autocast_off"] = measure(backend, prepared, args.batch, args.repeats, 1)
        pipe.sam_autocast = True

    stages = Stages(pipe)
    try:
        rec["stage_wall_ms"] = stage_wall_ms(backend, prepared[: args.batch], stages)
        rec["sam_image_features_ms_per_image"] = round(stages.acc["sam_image_features"] * 1000 / args.batch, 2)
        if not args.no_profile:
            prof = kernel_profile(backend, prepared[: args.batch], stages)
            rec["kernels"] = kernel_time_by_stage(prof)
            if args.trace:
                Path(args.trace).write_text(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40))
    finally:
        stages.close()
    if torch.cuda.is_available():
        rec["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
