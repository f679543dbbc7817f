"""Write an official-layout Sa2VA folder of a published shape with random weights (bf16 safetensors).

For the GPU runs: `worker` / `run` load it with the real loader, like a downloaded checkpoint.
The weights are built on the GPU (bench/batching.py build_reference), saved in the official key
layout (tiny.write_official_folder: InternLM2 q/k/v fused back into wqkv, SAM2 names, the tiny BPE
tokenizer whose ids fit any vocabulary). Prints one JSON object with the build and save times.

    python3 bench/gpu/random_folder.py --reference Sa2VA-8B --out /tmp/sa2va-8b
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="Sa2VA-8B", help="Sa2VA-1B, Sa2VA-4B, Sa2VA-8B, Sa2VA-26B, Sa2VA-InternVL3-8B")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    from batching import build_reference
    from sa2va_queue.worker.backends.sa2va.tiny import write_official_folder

    t = time.perf_counter()
    backend = build_reference(args.reference, args.device, "bf16", seed=args.seed, force_answer=None,
                              max_new_tokens=8, max_tiles=12)
    pipe = backend.pipeline
    # official SAM2 has one random-Fourier matrix for prompts and the image-wide positional
    # embedding (the folder stores it once), as tiny.random_model does
    ge = pipe.model.grounding_encoder
    with torch.no_grad():
        ge.shared_image_embedding.positional_embedding.copy_(ge.prompt_encoder.shared_embedding.positional_embedding)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    write_official_folder(pipe.model, pipe.tokenizer, pipe.config, args.out, shards=args.shards,
                          video_memory=False, dtype=torch.bfloat16)
    save_s = time.perf_counter() - t
    size = sum(f.stat().st_size for f in args.out.iterdir()) / 2**30
    print(json.dumps({"reference": args.reference, "out": str(args.out), "gib": round(size, 2),
                      "parameters": sum(p.numel() for p in pipe.model.parameters()),
                      "build_s": round(build_s, 1), "save_s": round(save_s, 1)}), flush=True)


if __name__ == "__main__":
    main()
