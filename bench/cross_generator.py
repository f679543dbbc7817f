"""Does the vesselness default carry over? Choose on one synthetic generator, report on the other.

    python bench/cross_generator.py                  # 20 frames per generator, Frangi; ~4 min on 2 cores
    python bench/cross_generator.py --n 12 --method sato

Two generators that share no code (producer/synth.py and producer/synth_xa.py) write `--n` frames
each (seed `--seed`, a set no default was ever looked at before). The vesselness backend is called
in-process, no queue: preprocess and filter response once per frame, then every candidate cut rule
of the grid (rule=percentile with each `low`, rule=hysteresis with each `low` x `high`) through the
backend's own `result()`, so the masks are exactly what a worker would store.

For each direction A -> B a candidate is chosen on A alone and reported on B next to the candidate
tuned on B itself (the best on the frames it is reported on: an optimistic reference, which makes
the gap conservative). The choice on A: among candidates whose mean Dice on A is within TOLERANCE of
A's best, the one with the strictest seed level `high` (ties: higher Dice). Where A barely tells
candidates apart, it takes the one that rejects most background structure, which unseen images
have more of. (This rule was settled after a first run with seed 100, where the plain best on synth
lost 0.07 Dice on xa; `--seed 200` is the confirmation on frames never looked at.)
The shipped default (modelspec.OPTIONS) and the rule before this one
(percentile, low=0.10) are reported on both. One JSON object per line on stdout; progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sa2va_queue.core.imaging import decode_image, decode_mask
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.producer import synth, synth_xa
from sa2va_queue.worker.backends.base import SegmentationRequest
from sa2va_queue.worker.backends.vesselness import VesselnessModel

LOWS = (0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.10, 0.12, 0.15, 0.2, 0.25, 0.3)
HIGHS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)
TOLERANCE = 0.02  # mean Dice differences below this are not a reason to prefer a candidate
PREVIOUS = {"rule": "percentile", "low": "0.1"}  # the default before: response / P99 > 0.10
GENERATORS = {"synth": synth.generate, "xa": synth_xa.generate}


def candidates() -> list[dict[str, str]]:
    out = [{"rule": "percentile", "low": str(lo)} for lo in LOWS]
    out += [{"rule": "hysteresis", "low": str(lo), "high": str(hi)} for lo in LOWS for hi in HIGHS if hi > lo]
    return out


def load_frames(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, uint8 RGB image, bool ground truth) of every generated frame."""
    frames = []
    for path in sorted(folder.iterdir()):
        if path.suffix not in (".jpg", ".png") or path.stem.endswith("_mask"):
            continue
        image = decode_image(path.read_bytes(), path.name)
        gt = decode_mask((folder / f"{path.stem}_mask.png").read_bytes(), path.name, image.shape[:2])
        frames.append((path.name, image, gt))
    return frames


def responses(model: VesselnessModel, frames: list[tuple[str, np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    out = []
    for name, image, _ in frames:
        grey = model.preprocess(SegmentationRequest(job_id=name, image=image, prompt=""))
        out.append(model.response(grey))
    return out


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    total = int(pred.sum()) + int(gt.sum())
    return 1.0 if total == 0 else 2.0 * int((pred & gt).sum()) / total


def choose(per_frame: np.ndarray, grid: list[dict[str, str]]) -> int:
    """Index of the chosen candidate: strictest seed within TOLERANCE of the best (module docstring)."""
    mean = per_frame.mean(axis=1)
    near = [i for i in range(len(grid)) if mean[i] >= mean.max() - TOLERANCE]
    return max(near, key=lambda i: (float(grid[i].get("high", grid[i]["low"])), mean[i]))


def model_for(method: str, options: dict[str, str]) -> VesselnessModel:
    return VesselnessModel(ModelSpec.parse("vesselness").with_options(method=method, **options))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="frames per generator")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--method", default="frangi", choices=("frangi", "sato"))
    ap.add_argument("--data", type=Path, default=None, help="keep generated frames here (default: a temp dir)")
    args = ap.parse_args()
    common = {"machine": f"{platform.machine()} {platform.system()}, {__import__('os').cpu_count()} cores",
              "date": datetime.now(timezone.utc).date().isoformat(), "method": args.method,
              "n_per_generator": args.n, "seed": args.seed}
    base = model_for(args.method, {})
    grid = candidates()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data or Path(tmp)
        data, resp = {}, {}
        for gen, generate in GENERATORS.items():
            folder = root / gen
            if not folder.exists():
                t0 = time.perf_counter()
                generate(folder, args.n, seed=args.seed)
                print(f"{gen}: generated {args.n} frames in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            data[gen] = load_frames(folder)[: args.n]
            t0 = time.perf_counter()
            resp[gen] = responses(base, data[gen])  # the response does not depend on the cut options
            print(f"{gen}: {args.method} responses in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        # Dice of every candidate on every frame, through the backend's own result()
        per_frame: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        for gen in GENERATORS:
            rows = []
            for options in grid:
                model = model_for(args.method, options)
                rows.append([dice(model.result(r).mask, gt) for r, (_, _, gt) in zip(resp[gen], data[gen])])
            per_frame[gen] = np.asarray(rows)  # (candidates, frames)
        table = {gen: d.mean(axis=1) for gen, d in per_frame.items()}
        print(f"grid of {len(grid)} candidates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        def spec_text(options: dict[str, str]) -> str:
            return str(ModelSpec.parse("vesselness").with_options(method=args.method, **options))

        for a, b in (("synth", "xa"), ("xa", "synth")):
            pick, tuned = choose(per_frame[a], grid), int(np.argmax(table[b]))
            print(json.dumps(common | {
                "kind": "transfer", "chosen_on": a, "reported_on": b,
                "chosen": spec_text(grid[pick]), "dice_on_chosen": round(float(table[a][pick]), 4),
                "dice_on_other": round(float(table[b][pick]), 4),
                "tuned_on_other": spec_text(grid[tuned]), "tuned_dice_on_other": round(float(table[b][tuned]), 4),
                "gap": round(float(table[b][tuned] - table[b][pick]), 4),
            }), flush=True)

        shipped = {k: str(base.params[k]) for k in ("rule", "low", "high")}
        for label, options in (("shipped default", shipped), ("previous default", PREVIOUS)):
            model = model_for(args.method, options)
            for gen in GENERATORS:
                rows = [compute_metrics(model.result(r).mask, gt) for r, (_, _, gt) in zip(resp[gen], data[gen])]
                mean = {k: round(float(np.mean([m[k] for m in rows if m[k] is not None])), 4)
                        for k in ("dice", "precision", "recall", "cldice")}
                print(json.dumps(common | {
                    "kind": label, "spec": spec_text(options), "generator": gen, **mean,
                    "tuned_dice": round(float(table[gen].max()), 4),
                    "gap_to_tuned": round(float(table[gen].max()) - mean["dice"], 4),
                }), flush=True)


if __name__ == "__main__":
    main()
