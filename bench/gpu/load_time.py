"""Load time of a Sa2VA folder from local disk, cold and warm page cache. JSON lines on stdout.

    python3 bench/gpu/load_time.py --reference Sa2VA-26B --folder /tmp/sa2va-26b --write \
        [--old .parity/old/checkpoint_before.py] [--out results.jsonl]

--write  streams a random folder of the published shape to --folder: official key layout and names
         (keymap.ours_to_official over the meta-device model, so the loader accounts for every
         tensor), bf16 safetensors in --shards files, each tensor drawn on the GPU (fan-in scaled
         normal, norms 1, biases 0, as bench/batching.py build_reference) and written as it is made
         (no 52 GB state dict in host memory), config.json and the tiny tokenizer; then fsync.
Then, each measurement in a fresh process (the way a worker starts), with the folder's pages
evicted from the page cache first for "cold" (fsync + posix_fadvise(DONTNEED) on every file;
/proc/meminfo's Cached before and after shows it worked):
  new cold   the checkpoint hash started first (as the worker command starts it, before torch is
             imported), then Sa2VAModel.setup("cuda") (checkpoint.load_folder + pipeline, what the worker does) with
             its parts timed (headers, meta model, reads, the rest), then `version` (the checkpoint
             hash the worker registers; sha256 of every weight file when there is no manifest.json),
             then one segmentation to show the model works
  new warm   the same, pages cached
  old warm   load_folder of another checkpoint.py (--old, e.g. the last commit's) for comparison
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "<image>Please segment the blood vessel."


def emit(rec: dict, out: Path | None) -> None:
    line = json.dumps(rec)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")


def cached_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Cached:"):
            return round(int(line.split()[1]) / 2**20, 2)
    return -1.0


def evict(folder: Path) -> dict:
    before = cached_gib()
    for f in sorted(folder.iterdir()):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return {"cached_gib_before": before, "cached_gib_after": cached_gib()}


# ------------------------------------------------------------------------------------------ write
def _header(entries: list[tuple[str, list[int]]]) -> tuple[bytes, list[int]]:
    offsets, meta, pos = [], {"__metadata__": {"format": "pt"}}, 0
    for key, shape in entries:
        n = 2
        for d in shape:
            n *= d
        meta[key] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets.append(pos)
        pos += n
    raw = json.dumps(meta, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offsets


def write_folder(reference: str, folder: Path, shards: int, device: str, seed: int) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    from batching import _random_value

    from sa2va_queue.worker.backends.sa2va import keymap
    from sa2va_queue.worker.backends.sa2va.checkpoint import build_empty
    from sa2va_queue.worker.backends.sa2va.config import Sa2VAConfig, reference_official_config
    from sa2va_queue.worker.backends.sa2va.tiny import build_tiny_tokenizer

    t0 = time.perf_counter()
    config = Sa2VAConfig.from_official(reference_official_config(reference), reference)
    model = build_empty(config)  # meta parameters, real buffers
    ours = dict(model.state_dict())
    tied = config.tie_word_embeddings
    if tied:
        ours.pop("language_model.lm_head.weight", None)
    # official SAM2 has one random-Fourier matrix for prompts and the image-wide positional embedding
    pe = "grounding_encoder.prompt_encoder.shared_embedding.positional_embedding"
    ours["grounding_encoder.shared_image_embedding.positional_embedding"] = ours[pe]
    official = keymap.ours_to_official(ours, config.llm_arch, keymap.lm_shape(config.text), tied=tied)
    buffers = {k for k, v in official.items() if v.device.type != "meta"}
    keys = sorted(official)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    raw = config.to_official()
    raw["llm_config"]["vocab_size"] = int(config.text.vocab_size)
    (folder / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    build_tiny_tokenizer(config.family).save_pretrained(str(folder))
    sizes = {k: 2 * official[k].numel() for k in keys}
    total = sum(sizes.values())
    parts, acc = [[]], 0
    for k in keys:  # contiguous key ranges of about equal bytes
        if acc >= total * len(parts) / shards and len(parts) < shards:
            parts.append([])
        parts[-1].append(k)
        acc += sizes[k]
    names = [f"model-{s + 1:05d}-of-{len(parts):05d}.safetensors" for s in range(len(parts))]

    def write_shard(s: int) -> None:  # one thread a shard: drawing, copying and writing overlap
        gen = torch.Generator(device=device).manual_seed(seed + s)
        head, _ = _header([(k, list(official[k].shape)) for k in parts[s]])
        with open(folder / names[s], "wb") as f:
            f.write(head)
            for k in parts[s]:
                v = official[k]
                t = v.to(torch.bfloat16) if k in buffers else _random_value(k, tuple(v.shape), torch.bfloat16,
                                                                            device, gen)
                f.write(memoryview(t.contiguous().cpu().reshape(-1).view(torch.uint8).numpy()))
            f.flush()
            os.fsync(f.fileno())

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(min(8, len(parts))) as pool:
        list(pool.map(write_shard, range(len(parts))))
    weight_map = {k: names[s] for s, part in enumerate(parts) for k in part}
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    return {"step": "write", "reference": reference, "folder": str(folder), "shards": len(parts),
            "tensors": len(keys), "gib": round(total / 2**30, 2), "write_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------ measure (child)
def measure(folder: Path, which: str, old: Path | None, dtype: str) -> dict:
    t_start = time.perf_counter()
    if which == "new":  # as the worker command does: the checkpoint hash starts before torch is imported
        from sa2va_queue.worker.backends.sa2va.weightfiles import start_folder_hash

        start_folder_hash(folder)
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"  # the CPU only to try this script out

    def sync():
        if cuda:
            torch.cuda.synchronize()

    if cuda:
        torch.zeros(1, device="cuda")
    sync()
    rec = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "cuda_init_s": round(time.perf_counter() - t_start, 2)}
    if which == "old":
        import importlib.util

        spec = importlib.util.spec_from_file_location("sa2va_queue.worker.backends.sa2va._checkpoint_old", old)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = mod  # dataclasses look their module up there
        spec.loader.exec_module(mod)
        t = time.perf_counter()
        loaded = mod.load_folder(folder, dtype=dtype, device=device)
        sync()
        rec["load_folder_s"] = round(time.perf_counter() - t, 2)
        rec["gpu_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None
        rec["n_params"] = loaded.report.n_params
        return rec

    from sa2va_queue.core.modelspec import ModelSpec
    from sa2va_queue.worker.backends.sa2va import checkpoint
    from sa2va_queue.worker.backends.sa2va.backend import Sa2VAModel

    parts: dict[str, float] = {}

    def timed(obj, name, label):
        orig = getattr(obj, name)

        def f(*a, **k):
            t = time.perf_counter()
            try:
                return orig(*a, **k)
            finally:
                parts[label] = parts.get(label, 0.0) + time.perf_counter() - t

        setattr(obj, name, f)

    timed(checkpoint.WeightSource, "__init__", "headers_s")
    timed(checkpoint.WeightSource, "read", "read_s")
    timed(checkpoint, "build_empty", "meta_model_s")
    timed(checkpoint, "load_weights_into", "weights_s")
    # a scripted answer for the check below: random weights would otherwise decode 2048 tokens
    backend = Sa2VAModel(ModelSpec(name="sa2va", path=str(folder),
                                   options={"dtype": dtype, "force_answer": "Sure, [SEG]."}))
    t = time.perf_counter()
    backend.setup(device)
    sync()
    rec["setup_s"] = round(time.perf_counter() - t, 2)
    rec.update({k: round(v, 2) for k, v in parts.items()})
    rec["transforms_and_set_s"] = round(parts["weights_s"] - parts["read_s"], 2)
    rec["gpu_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None
    t = time.perf_counter()
    rec["checkpoint_hash"] = backend.version.checkpoint_hash[:16]
    rec["version_hash_s"] = round(time.perf_counter() - t, 2)
    rec["ready_s"] = round(rec["setup_s"] + rec["version_hash_s"], 2)
    rec["from_start_to_ready_s"] = round(time.perf_counter() - t_start, 2)  # torch import and CUDA init too
    import numpy as np

    img = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    t = time.perf_counter()
    out = backend.pipeline.segment([img], [PROMPT])
    sync()
    rec["first_segment_s"] = round(time.perf_counter() - t, 2)
    rec["first_segment_tokens"] = len(out[0].tokens)
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", default="Sa2VA-26B")
    ap.add_argument("--folder", type=Path, required=True)
    ap.add_argument("--write", action="store_true", help="write the random folder first (replaces its files)")
    ap.add_argument("--shards", type=int, default=11)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="where --write draws the tensors")
    ap.add_argument("--dtype", default="bf16", help="what the model is loaded as (the folder is bf16)")
    ap.add_argument("--old", type=Path, help="another checkpoint.py to time warm, e.g. the last commit's")
    ap.add_argument("--steps", default="new-cold,new-warm,old-warm")
    ap.add_argument("--timeout", type=int, default=240, help="seconds per measurement")
    ap.add_argument("--out", type=Path, help="also append the JSON lines here")
    ap.add_argument("--measure", choices=["new", "old"], help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.measure:
        print(json.dumps(measure(args.folder, args.measure, args.old, args.dtype)), flush=True)
        return 0
    if args.write:
        emit(write_folder(args.reference, args.folder, args.shards, args.device, args.seed), args.out)
    ok = True
    for step in [s.strip() for s in args.steps.split(",") if s.strip()]:
        which, cache = step.split("-")
        if which == "old" and args.old is None:
            continue
        rec = {"step": step}
        if cache == "cold":
            rec.update(evict(args.folder))
        cmd = [sys.executable, str(Path(__file__).resolve()), "--folder", str(args.folder), "--measure", which,
               "--dtype", args.dtype]
        if args.old is not None:
            cmd += ["--old", str(args.old.resolve())]
        t = time.perf_counter()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rec.update(error=f"over {args.timeout} s")
            ok = False
            emit(rec, args.out)
            continue
        rec["process_s"] = round(time.perf_counter() - t, 2)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
        if proc.returncode != 0 or not lines:
            rec.update(error=f"rc {proc.returncode}", log_tail=(proc.stdout + proc.stderr)[-2000:])
            ok = False
        else:
            rec.update(json.loads(lines[-1]))
        emit(rec, args.out)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
