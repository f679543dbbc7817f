"""Who held a worker's GIL: py-spy's raw samples (`record --gil --threads --format raw`) per stage.

    python bench/gpu/gil_share.py pyspy-nogt.txt [--top 15]

py-spy writes one line per distinct stack, `frame;frame;...;leaf COUNT`, root first. With `--gil`
only the thread holding the GIL is sampled, so the shares say which stage's Python competes with the
model thread for the interpreter. Stacks are grouped by thread name (the worker names its threads).
Prints one JSON object: samples, share per stage, and the leaf frames with the most samples.
"""

from __future__ import annotations

import argparse
import collections
import json
import re

# thread names (py-spy's `thread (tid): name`) as the worker's stages
NAMES = (
    (re.compile(r"micro-batcher"), "model (batcher thread)"),
    (re.compile(r"intake"), "intake (claims)"),
    (re.compile(r"host_\d+"), "host pool (decode, preprocess, PNGs)"),
    (re.compile(r"writer"), "writer"),
    (re.compile(r"completer"), "completer (SQL)"),
    (re.compile(r"ThreadPoolExecutor-\d+_\d+"), "celery task threads"),
    (re.compile(r"MainThread"), "celery main thread (consumer, events, acks)"),
    (re.compile(r"QueueFeederThread|Thread-\d+ \(_manage|ExecutorManagerThread"), "metric processes' feeders"),
)


def stage_of(stack: str) -> str:
    head = stack.split(";", 1)[0]
    name = head.split(":", 1)[1].strip() if head.startswith("thread") and ":" in head else head
    return next((label for pattern, label in NAMES if pattern.fullmatch(name)), name)


def shares(lines: list[str], top: int) -> dict:
    per_stage: collections.Counter[str] = collections.Counter()
    leaves: collections.Counter[str] = collections.Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        per_stage[stage_of(stack)] += n
        leaves[stack.rsplit(";", 1)[-1]] += n
    return {"samples": total,
            "share": {k: round(v / total, 3) for k, v in per_stage.most_common()} if total else {},
            "top_leaves": [[k, round(v / total, 3)] for k, v in leaves.most_common(top)] if total else []}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("raw", help="py-spy record --format raw output")
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    with open(args.raw, encoding="utf-8", errors="replace") as f:
        print(json.dumps({"file": args.raw, **shares(f.readlines(), args.top)}))


if __name__ == "__main__":
    main()
