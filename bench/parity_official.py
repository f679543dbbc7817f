"""Parity of our Sa2VA implementation against the OFFICIAL remote code, on identical random weights.

Two processes per model:
  ours      (this venv, transformers 5): build a random model, save it in the official HF layout
            (+ the official python files from --official-dir, auto_map'ed), load that folder with
            our loader, run our pipeline with a scripted answer, save every stage to .npz.
  official  (subprocess, PYTHONPATH=--site first, i.e. transformers 4.57 / 4.49 for InternLM2):
            AutoModel.from_pretrained(folder, trust_remote_code=True) and `predict_forward` on the same
            images. Only the choice of answer tokens is changed: a LogitsProcessor passed to the
            official `language_model.generate` call keeps only the scripted token at each step, so
            prompt building, KV-cached generation, the [SEG] hidden-state selection, SAM2 and the mask
            post-processing all run the official code. The probability map is recomputed from the
            logits that `language_embd_inference` returns, with the same two ops predict_forward
            applies before its `> 0.5`; the returned bool masks are kept and checked against it.

Models:
  --families qwen2,...   tiny language model and InternViT in the official geometry: the real 448-px
                         tiles with 14-px patches (256 tokens a tile) and the real SAM2 Hiera-L at
                         1024 px, because `predict_forward` hard-codes 448/14/1024 and `SAM2()`
                         hard-codes Hiera-L; the official code runs without any patch to its sizes.
  --reference Sa2VA-1B,Sa2VA-8B   real-size shapes of the published checkpoints (config.py
                         REFERENCE_MODELS), random weights built on --device in --dtype
                         (bench/batching.py build_reference) and saved in --dtype, so both sides start
                         from the same rounded values.
On the CPU, `.cuda()` is made a no-op and the SAM2 inference state's hard-coded `torch.device("cuda")`
is replaced by the CPU; in bf16 its CUDA-only SAM2 autocast is made a CPU one (without it the official
bf16 code fails on the CPU), nothing else is patched.

Ours runs each scripted answer per image with every --decode mode (one-pass: the default path, the
answer in one forward with the prompt; steps: fed token by token through the KV cache as the
official code does), a free greedy run (--free-tokens) and, with --batch N, N images in one batch
(the cases cycled, each with its own script, one-pass), each compared with the official run of the
same image.

--truth fp32 runs the official side once more on the same folder and cases in fp32 (SAM2 autocast off,
TF32 off on CUDA; a --reference folder is saved in --dtype, so its bf16 weights are upcast exactly, a
tiny family's folder is fp32) and compares the official run at
--dtype and ours (each decode mode) with it: whether ours is as close to exact as the official code
itself (vs_fp32_truth in the report), and stage by stage (stages_vs_fp32_truth: the worst image's
max abs and RMS-relative error of every saved tensor; the summary keeps the RMS-relative ones), and
mask by mask (vs_fp32_truth_paired in the summary: how many masks each run is closer on, Wilcoxon p).

    python bench/parity_official.py --official-dir .parity/official --site .parity/site \
        [--site-internlm2 .parity/site-internlm2] --device cpu --out .parity/run \
        [--families qwen2,internvl3-qwen2.5,internlm2 | --reference Sa2VA-1B,Sa2VA-8B] [--dtype fp32|bf16] \
        [--decode one-pass,steps] [--batch 4] [--logit-scale 20] [--cases 1] [--truth fp32]

--logit-scale rescales SAM2's mask logits before saving (calibrate_logits): the tiny geometry's random
weights give |logit| in the thousands, where a 1e-5 relative difference already moves a boundary
pixel's probability by 0.01; the real-size reference weights give |logit| <= ~8 as drawn. On the GPU:
bench/gpu/parity_real.sh.

Prints JSON: per model, decode mode and image the mask IoU, max |probability difference|, answer
equality, the stage-by-stage max abs differences, and a summary against --iou-min / --prob-max (the
issue's bar: IoU >= 0.995, max probability difference <= 0.005). This file contains no official code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

DEFAULT_FAMILIES = ["qwen2", "internvl3-qwen2.5", "internlm2"]
# (width, height, scripted answer)
DEFAULT_CASES = [
    (512, 512, "Sure, [SEG]."),
    (400, 300, "It is [SEG] and [SEG]."),
]
PROMPT = "<image>Please segment the blood vessel."


def make_image(width: int, height: int, seed: int) -> np.ndarray:
    """Deterministic smooth random RGB image (blobs + lines + a little noise), uint8 (H, W, 3)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        s = rng.uniform(0.05, 0.3) * max(width, height)
        col = rng.uniform(-1, 1, 3)
        img += np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))[..., None] * col
    for _ in range(6):
        a, b, c = rng.normal(size=3)
        d = np.abs(a * (xx - width / 2) + b * (yy - height / 2) + c * 20) / np.hypot(a, b)
        img += (np.exp(-d / 3.0) * rng.uniform(0.5, 1.5))[..., None]
    img += rng.normal(scale=0.05, size=img.shape)
    img = (img - img.min()) / (img.max() - img.min() + 1e-6)
    return (img * 255).round().clip(0, 255).astype(np.uint8)


# ================================================================================================
# our side (transformers 5)


def build_ours(family: str, seed: int):
    """Tiny random model in the official geometry: 448-px tiles / 14-px patches, SAM2 Hiera-L."""
    from sa2va_queue.worker.backends.sa2va import tiny
    from sa2va_queue.worker.backends.sa2va.config import Sa2VAConfig

    tokenizer = tiny.build_tiny_tokenizer(family)
    raw = tiny.tiny_official_config(family, len(tokenizer))
    raw["vision_config"].update(image_size=448, patch_size=14)
    raw["force_image_size"] = 448
    raw.pop("sam2_config", None)  # -> SAM2 Hiera-L at 1024 px, what the official SAM2() builds
    config = Sa2VAConfig.from_official(raw, "parity config")
    return tiny.random_model(config, seed).float().eval(), tokenizer, config


def write_folder(family: str, seed: int, official_dir: Path, folder: Path, logit_scale: float = 0.0) -> dict:
    from sa2va_queue.worker.backends.sa2va.tiny import write_official_folder

    model, tokenizer, config = build_ours(family, seed)
    calib = calibrate_logits(model, tokenizer, config, logit_scale, seed) if logit_scale > 0 else {}
    if folder.exists():
        shutil.rmtree(folder)
    write_official_folder(model, tokenizer, config, folder, video_memory=True)
    finish_folder(folder, official_dir)
    return calib


def calibrate_logits(model, tokenizer, config, target: float, seed: int) -> dict:
    """Scale SAM2's mask logits to a trained model's range: random weights give low-res logits of
    thousands (seen: |logit| up to ~5000), so a relative rounding difference of 1e-5 already moves a
    boundary pixel's probability by 0.01, far from what a trained model (|logit| of tens) shows.
    The low-res masks are linear in the last layer of the output hypernetwork MLPs (masks =
    hyper_in @ upscaled embedding), so scaling that layer by `target / max|logit|` (measured on the
    first case image, our model, before saving) scales every logit by exactly that factor; the IoU
    head and everything upstream are untouched. Both sides then load the same scaled weights."""
    import torch

    from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

    w, h, answer = DEFAULT_CASES[0]
    seen = []
    orig = model.sam_decode

    def capture(*a, **k):
        r = orig(*a, **k)
        seen.append(float(r.float().abs().max()))
        return r

    model.sam_decode = capture
    try:
        Sa2VAPipeline(model, tokenizer, config, force_answer=answer).segment([make_image(w, h, seed * 100)], [PROMPT])
    finally:
        del model.sam_decode
    factor = target / max(seen)
    with torch.no_grad():
        for mlp in model.grounding_encoder.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(factor)
            if mlp.proj_out.bias is not None:
                mlp.proj_out.bias.mul_(factor)
    return {"raw_max_abs_logit": round(max(seen), 2), "logit_scale_factor": factor, "target_max_abs_logit": target}


def write_reference_folder(name: str, seed: int, official_dir: Path, folder: Path, device: str, dtype: str,
                           shards: int, logit_scale: float = 0.0) -> dict:
    """A published shape with random weights (as bench/gpu/random_folder.py), saved in `dtype`."""
    import gc

    import torch

    sys.path.insert(0, str(HERE))
    from batching import build_reference

    from sa2va_queue.worker.backends.sa2va.checkpoint import parse_dtype
    from sa2va_queue.worker.backends.sa2va.tiny import write_official_folder

    backend = build_reference(name, device, dtype, seed=seed, force_answer=None, max_new_tokens=8, max_tiles=12)
    pipe = backend.pipeline
    # official SAM2 has one random-Fourier matrix for prompts and the image-wide positional
    # embedding (the folder stores it once), as tiny.random_model does
    ge = pipe.model.grounding_encoder
    with torch.no_grad():
        ge.shared_image_embedding.positional_embedding.copy_(ge.prompt_encoder.shared_embedding.positional_embedding)
    calib = calibrate_logits(pipe.model, pipe.tokenizer, pipe.config, logit_scale, seed) if logit_scale > 0 else {}
    if folder.exists():
        shutil.rmtree(folder)
    write_official_folder(pipe.model, pipe.tokenizer, pipe.config, folder, shards=shards, video_memory=True,
                          dtype=parse_dtype(dtype))
    del backend, pipe, ge
    _free(device)
    finish_folder(folder, official_dir)
    return calib


def finish_folder(folder: Path, official_dir: Path) -> None:
    """What the official code needs beside our writer's output: a tokenizer class transformers 4.x
    knows, and the official python files that config.json's auto_map names."""
    # transformers 5 writes tokenizer_class "TokenizersBackend", unknown to 4.x; both know this one
    tc = folder / "tokenizer_config.json"
    d = json.loads(tc.read_text())
    d["tokenizer_class"] = "PreTrainedTokenizerFast"
    d.pop("backend", None)
    tc.write_text(json.dumps(d, indent=2))
    for f in sorted(official_dir.glob("*.py")):
        shutil.copy2(f, folder / f.name)


def _free(device: str) -> None:
    import gc

    import torch

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


class Recorder:
    def __init__(self) -> None:
        self.data: dict[str, list] = {}

    def add(self, key: str, value) -> None:
        import torch

        if isinstance(value, torch.Tensor):
            value = value.detach().float().cpu().numpy()
        self.data.setdefault(key, []).append(value)


def run_ours(folder: Path, case: dict, device: str, dtype: str, out: Path) -> None:
    import torch

    from sa2va_queue.worker.backends.sa2va.checkpoint import load_folder
    from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

    t0 = time.perf_counter()
    loaded = load_folder(folder, dtype=dtype, device=device)
    load_s = time.perf_counter() - t0
    m, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    rec = Recorder()
    originals = {}

    def wrap(name, keys):
        orig = originals.setdefault(name, getattr(m, name))

        def f(*a, **k):
            r = orig(*a, **k)
            keys(r, a, k)
            return r

        setattr(m, name, f)

    from sa2va_queue.worker.backends.sa2va.modeling import module_dtype

    # the tensors the vision tower and SAM2 receive, in the dtype they compute in (the official side
    # records its pixel tensors after predict_forward's cast to the model dtype)
    vit_dtype, sam_dtype = module_dtype(m.vision_tower), module_dtype(m.grounding_encoder)
    wrap("extract_feature", lambda r, a, k: (rec.add("pixel_values_in", a[0].to(vit_dtype)), rec.add("vit_embeds", r)))
    wrap("_logits", lambda r, a, k: rec.add("logits", r))
    wrap("language_embeddings", lambda r, a, k: (rec.add("seg_hidden", a[0]), rec.add("lang_embd", r)))
    wrap("sam_image_features", lambda r, a, k: (rec.add("sam_pixel_values_in", a[0].to(sam_dtype)),
                                                [rec.add(f"sam_feat{i}", x) for i, x in enumerate(r)]))
    wrap("sam_decode", lambda r, a, k: rec.add("low_res_best", r))
    def dec_hook(mod, a, o):  # must return None (a returned value would replace the output)
        rec.add("low_res_multi", o[0][:, 0])
        rec.add("iou_pred", o[1][:, 0])
        rec.add("obj_score", o[3].reshape(-1))

    hook = m.grounding_encoder.mask_decoder.register_forward_hook(dec_hook)
    results = {"load_s": round(load_s, 2)}
    modes = list(case["decodes"]) + ["free"]
    for i, c in enumerate(case["images"]):
        img = np.load(out / f"image{i}.npy")
        for mode in modes:
            rec.data = {}
            if mode != "free":  # the scripted answer, in one forward (default) or step by step
                pipe = Sa2VAPipeline(m, tok, cfg, force_answer=c["answer"], sam_autocast=case["sam_autocast"],
                                     one_pass=mode == "one-pass")
            else:  # plain greedy steps: their logits are compared with the official ones step by step
                pipe = Sa2VAPipeline(m, tok, cfg, max_new_tokens=case["free_tokens"], sam_autocast=case["sam_autocast"],
                                     draft_answer=None)
            prep = pipe.prepare(img, case["prompt"])
            _sync(device)
            t0 = time.perf_counter()
            res = pipe.run([prep])[0]
            _sync(device)
            dt = time.perf_counter() - t0
            arrays = {
                "prompt_ids": np.array(prep.input_ids),
                "pixel_values_host": prep.pixel_values.numpy(),  # the PIL path, float32
                "sam_pixel_values_host": prep.sam_pixel_values.numpy()[None],
                "tokens": np.array(res.tokens),
            }
            for j, p in enumerate(res.probabilities):
                arrays[f"prob{j}"] = p
            for k, v in rec.data.items():
                if k == "logits":
                    arrays[k] = np.stack([x.reshape(-1) for x in v])
                elif len(v) == 1:
                    arrays[k] = v[0]
                else:
                    arrays[k] = np.concatenate(v)
            for k in ("pixel_values", "sam_pixel_values"):  # SAM2 runs only for an answer with [SEG]
                if f"{k}_in" in arrays:
                    arrays[k] = arrays.pop(f"{k}_in")
            np.savez(out / f"ours_{mode}{i}.npz", **arrays)
            results[f"{mode}{i}"] = {"text": res.text, "seconds": round(dt, 3), "n_seg": res.n_seg}
    hook.remove()
    for name in originals:  # the recorders off for the batch
        delattr(m, name)
    if case.get("batch", 0) > 1:
        results["batch"] = run_ours_batch(m, tok, cfg, case, device, out)
    (out / "ours.json").write_text(json.dumps(results, indent=2))
    del m, loaded, pipe
    _free(device)


def run_ours_batch(m, tok, cfg, case: dict, device: str, out: Path) -> dict:
    """The cases cycled to --batch images, in ONE batch of the default path (one pass), each image with
    its own scripted answer (the forced ids handed to model.generate per image)."""
    from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

    n_img = len(case["images"])
    items = [k % n_img for k in range(case["batch"])]
    pipe = Sa2VAPipeline(m, tok, cfg, force_answer=case["images"][0]["answer"], sam_autocast=case["sam_autocast"])
    generate = m.generate

    def per_image_scripts(*a, **k):
        k["forced"] = [case["images"][i]["script"] for i in items]
        return generate(*a, **k)

    m.generate = per_image_scripts
    try:
        preps = [pipe.prepare(np.load(out / f"image{i}.npy"), case["prompt"]) for i in items]
        _sync(device)
        t0 = time.perf_counter()
        res = pipe.run(preps)
        _sync(device)
        dt = time.perf_counter() - t0
    finally:
        del m.generate
    arrays = {"items": np.array(items)}
    for k, r in enumerate(res):
        arrays[f"tokens{k}"] = np.array(r.tokens)
        for j, p in enumerate(r.probabilities):
            arrays[f"item{k}_prob{j}"] = p
    np.savez(out / "ours_batch.npz", **arrays)
    return {"items": items, "texts": [r.text for r in res], "seconds": round(dt, 3)}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ================================================================================================
# official side (subprocess, transformers 4.x from --site). Imports nothing from this project.


def _cpu_patches() -> None:
    import torch

    torch.Tensor.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]
    torch.nn.Module.cuda = lambda self, *a, **k: self  # type: ignore[method-assign]


def _import_torchvision() -> str:
    """torchvision from --site; a CUDA build on a CPU-only torch cannot load its C ops: skip their meta kernels."""
    try:
        import torchvision  # noqa: F401

        return "ok"
    except (RuntimeError, OSError) as exc:
        import types

        for k in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
            del sys.modules[k]
        sys.modules["torchvision._meta_registrations"] = types.ModuleType("torchvision._meta_registrations")
        import torchvision  # noqa: F401,F811

        return f"C ops unavailable ({str(exc)[:80]}); transforms only"


def run_official(folder: Path, case: dict, device: str, dtype: str, out: Path, autocast: bool) -> None:
    import torch

    if device == "cpu":
        _cpu_patches()
    elif case.get("truth"):  # fp32 means fp32: cuDNN convolutions (and matmuls) default to TF32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    tv = _import_torchvision()
    import torch.nn.functional as F
    import transformers
    from PIL import Image
    from transformers import AutoModel, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    t_load = time.perf_counter()
    # low_cpu_mem_usage: meta-device init (4.57's default; 4.49 would otherwise run the random init of
    # every weight first, minutes for the 8B); missing keys are still listed in the loading info
    model, info = AutoModel.from_pretrained(
        str(folder), trust_remote_code=True, torch_dtype=tdtype, output_loading_info=True, low_cpu_mem_usage=True
    )
    # transformers 4.49 leaves missing keys on the meta device under low_cpu_mem_usage (4.57 initialises
    # them): zeros, so the model can move; compare() shows which missing keys images would use
    import itertools

    still_meta = []
    for name, t in itertools.chain(model.named_parameters(), model.named_buffers()):
        if t.device.type == "meta":
            mod_name, _, attr = name.rpartition(".")
            mod = model.get_submodule(mod_name)
            zeros = torch.zeros(t.shape, dtype=t.dtype)
            if attr in mod._parameters:
                mod._parameters[attr] = torch.nn.Parameter(zeros, requires_grad=False)
            else:
                mod._buffers[attr] = zeros
            still_meta.append(name)
    model = model.to(device).eval()
    load_s = time.perf_counter() - t_load
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=True)
    sam_mod = sys.modules[type(model.grounding_encoder).__module__]
    sam2 = model.grounding_encoder.sam2_model
    rec = Recorder()

    # --- device: the inference state hard-codes torch.device("cuda")
    orig_init_state = sam2.init_state

    def init_state(images):
        rec.add("sam_pixel_values", images)
        st = orig_init_state(images)
        st["device"] = st["storage_device"] = torch.device(device)
        return st

    sam2.init_state = init_state
    if not autocast or (device == "cpu" and dtype != "fp32"):
        import contextlib

        # off; or on the CPU in bf16, where the official code only runs under the autocast it has on CUDA
        # (its video-memory encoder gets fp32 masks): that autocast, for the CPU
        ac = (lambda *a, **k: contextlib.nullcontext()) if not autocast else (
            lambda *a, **k: torch.autocast("cpu", dtype=k.get("dtype", torch.bfloat16)))
        sam_mod.torch = type("T", (), {"__getattr__": lambda s, n: getattr(torch, n), "autocast": staticmethod(ac)})()

    # --- captures (return values only; the official computation is untouched)
    def wrap(obj, name, cb):
        orig = getattr(obj, name)

        def f(*a, **k):
            r = orig(*a, **k)
            cb(r, a, k)
            return r

        setattr(obj, name, f)

    wrap(model, "extract_feature", lambda r, a, k: rec.add("vit_embeds", r))
    wrap(model, "generate", lambda r, a, k: (rec.add("prompt_ids", k["input_ids"][0]),
                                              rec.add("pixel_values", k["pixel_values"])))
    wrap(sam2, "forward_image", lambda r, a, k: [rec.add(f"sam_feat{i}", x) for i, x in enumerate(r["backbone_fpn"][:2])])
    wrap(sam2, "_prepare_memory_conditioned_features", lambda r, a, k: rec.add("sam_feat2", r))
    wrap(model.grounding_encoder, "language_embd_inference", lambda r, a, k: rec.add("video_res_logits", r))
    def fcs_hook(mod, a, o):  # returns None: the output is left alone
        rec.add("seg_hidden", a[0])
        rec.add("lang_embd", o)

    model.text_hidden_fcs.register_forward_hook(fcs_hook)

    def dec_hook(mod, a, o):
        low, ious, _, obj = o
        rec.add("low_res_multi", low)
        rec.add("iou_pred", ious)
        rec.add("obj_score", obj.reshape(-1))
        rec.add("low_res_best", low[torch.arange(low.shape[0]), ious.argmax(-1)])

    sam2.sam_mask_decoder.register_forward_hook(dec_hook)

    class Script(LogitsProcessor):
        """Records the raw scores; with a script, keeps only the scripted token (the official greedy picks it)."""

        def __init__(self, script, eos):
            self.script, self.eos, self.offset = script, eos, None

        def __call__(self, input_ids, scores):
            if self.offset is None:
                self.offset = input_ids.shape[1]
            rec.add("logits", scores[0])
            if self.script is None:
                return scores
            step = input_ids.shape[1] - self.offset
            tok = self.script[step] if step < len(self.script) else self.eos
            forced = torch.full_like(scores, float("-inf"))
            forced[:, tok] = 0
            return forced

    lm = model.language_model
    orig_lm_generate = lm.generate
    current = {"script": None}

    def lm_generate(*a, **k):
        procs = LogitsProcessorList(list(k.pop("logits_processor", None) or []))
        procs.append(Script(current["script"], tokenizer.eos_token_id))
        r = orig_lm_generate(*a, logits_processor=procs, **k)
        rec.add("tokens", r.sequences[0])
        return r

    lm.generate = lm_generate

    results = {"transformers": transformers.__version__, "torchvision": tv, "torch": torch.__version__,
               "load_s": round(load_s, 2),
               "meta_zero_filled": still_meta,
               "missing_keys": sorted(info.get("missing_keys", [])),
               "unexpected_keys": sorted(info.get("unexpected_keys", [])),
               "mismatched_keys": [list(map(str, x)) for x in info.get("mismatched_keys", [])]}
    for i, c in enumerate(case["images"]):
        img = Image.fromarray(np.load(out / f"image{i}.npy"))
        for mode in ("forced", "free"):
            rec.data = {}
            max_new = 2048 if mode == "forced" else case["free_tokens"]
            # what predict_forward does on its first call, with the limit we want for the free run
            model.init_prediction_config = False
            model.preparing_for_generation(tokenizer=tokenizer, max_new_tokens=max_new)
            model.torch_dtype = tdtype  # predict_forward casts its pixel tensors to this (hard-coded bf16)
            current["script"] = c["script"] if mode == "forced" else None
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.no_grad():
                ret = model.predict_forward(image=img, text=case["prompt"], tokenizer=tokenizer)
            if device == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            arrays = {}
            for k, v in rec.data.items():
                if k == "logits":
                    arrays[k] = np.stack([x.reshape(-1) for x in v])
                elif k in ("prompt_ids", "tokens", "pixel_values", "sam_pixel_values", "sam_feat0", "sam_feat1"):
                    arrays[k] = v[0]  # once per call / identical per [SEG] (SAM2 re-encodes per [SEG])
                elif k == "sam_feat2":
                    arrays[k] = v[0]
                elif len(v) == 1:
                    arrays[k] = v[0]
                else:
                    arrays[k] = np.concatenate(v)
            # per [SEG]: the probability predict_forward thresholds (same interpolate, then sigmoid)
            w, h = img.size
            for j, logits in enumerate(rec.data.get("video_res_logits", [])):
                t = torch.from_numpy(logits)
                prob = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[:, 0].sigmoid()
                arrays[f"prob{j}"] = prob[0].numpy()
                arrays[f"mask{j}"] = np.asarray(ret["prediction_masks"][j][0])
                arrays[f"mask_check{j}"] = np.array(bool(((prob[0] > 0.5).numpy() == arrays[f"mask{j}"]).all()))
            np.savez(out / f"official_{mode}{i}.npz", **arrays)
            results[f"{mode}{i}"] = {"text": ret["prediction"], "seconds": round(dt, 3),
                                     "n_seg": len(ret["prediction_masks"])}
    (out / "official.json").write_text(json.dumps(results, indent=2))


# ================================================================================================
# comparison


def _maxdiff(a, b):
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        if a.size == b.size:
            b = b.reshape(a.shape)
        else:
            return f"shape {a.shape} vs {b.shape}"
    return float(np.abs(a - b).max()) if a.size else 0.0


def _rel(a, b):
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size != b.size:
        return None
    return float(np.abs(a - b.reshape(a.shape)).max() / (np.abs(b).max() + 1e-12))


STOP_WORDS = ("<|im_end|>", "<|endoftext|>")


# the tensors both sides save, in the order the pipeline computes them
STAGES = ("pixel_values", "sam_pixel_values", "vit_embeds", "seg_hidden", "lang_embd", "sam_feat0", "sam_feat1",
          "sam_feat2", "low_res_multi", "iou_pred", "obj_score", "low_res_best")


def _rms_rel(a, b):
    """RMS of the difference over the RMS of b: the typical error, where max_abs shows the worst element."""
    if a is None or b is None:
        return None
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size != b.size or not a.size:
        return None
    b = b.reshape(a.shape)
    return float(np.sqrt(np.mean((a - b) ** 2)) / (np.sqrt(np.mean(b ** 2)) + 1e-12))


def _strip_stop(text: str) -> str:
    """predict_forward decodes the stop token too (`...<|im_end|>`); ours drops it."""
    for w in STOP_WORDS:
        if text.endswith(w):
            return text[: -len(w)].strip()
    return text


VIDEO_ONLY = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
              "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.")


def _mask_metrics(prob_ours: np.ndarray, prob_off: np.ndarray, mask_off: np.ndarray) -> dict:
    mo, mp = prob_ours > 0.5, mask_off.astype(bool)
    union = np.logical_or(mo, mp).sum()
    d = np.abs(prob_ours.astype(np.float64) - prob_off)
    return {"iou": float(np.logical_and(mo, mp).sum() / union) if union else 1.0, "max": float(d.max()),
            "mean": float(d.mean()), "flip": float((mo != mp).mean())}


def compare_decode(out: Path, case: dict, decode: str, oj: dict, fj: dict) -> list[dict]:
    """Per image: ours with `decode` against the official scripted run."""
    per_image = []
    for i, c in enumerate(case["images"]):
        O = dict(np.load(out / f"ours_{decode}{i}.npz"))
        P = dict(np.load(out / f"official_forced{i}.npz"))
        n_seg = sum(1 for k in O if k.startswith("prob"))
        n_seg_off = sum(1 for k in P if k.startswith("prob"))
        ms = [_mask_metrics(O[f"prob{j}"], P[f"prob{j}"], P[f"mask{j}"]) for j in range(min(n_seg, n_seg_off))]
        stages = {}
        for k in STAGES:
            stages[k] = {"max_abs": _maxdiff(O.get(k), P.get(k)), "rel": _rel(O.get(k), P.get(k))}
        lo, lp = O.get("logits"), P.get("logits")
        if lo is not None and lp is not None:  # steps only (one pass computes no logits for a script)
            n = min(len(lo), len(lp))
            stages["step_logits"] = {"max_abs": _maxdiff(lo[:n], lp[:n]), "rel": _rel(lo[:n], lp[:n])}
        per_image.append({
            "image": f"{c['width']}x{c['height']}",
            "answer": c["answer"],
            "n_seg": [n_seg, n_seg_off],
            "mask_iou": [x["iou"] for x in ms],
            "max_abs_prob_diff": [x["max"] for x in ms],
            "mean_abs_prob_diff": [x["mean"] for x in ms],
            "pixels_flipped": [x["flip"] for x in ms],
            "official_mask_equals_recomputed_prob": [bool(P[f"mask_check{j}"]) for j in range(n_seg_off)],
            "answer_equal": oj[f"{decode}{i}"]["text"] == _strip_stop(fj[f"forced{i}"]["text"]),
            "answer_ours": oj[f"{decode}{i}"]["text"],
            "answer_official": fj[f"forced{i}"]["text"],
            "tokens_equal": O["tokens"].tolist() == P["tokens"].tolist(),
            "prompt_ids_equal": O["prompt_ids"].tolist() == P["prompt_ids"].tolist(),
            "n_prompt_tokens": int(len(O["prompt_ids"])),
            "stages": stages,
            "seconds": {"ours": oj[f"{decode}{i}"]["seconds"], "official": fj[f"forced{i}"]["seconds"]},
        })
    return per_image


def compare_free(out: Path, case: dict) -> list[dict]:
    res = []
    for i, c in enumerate(case["images"]):
        Of, Pf = dict(np.load(out / f"ours_free{i}.npz")), dict(np.load(out / f"official_free{i}.npz"))
        free_o, free_p = Of["tokens"].tolist(), Pf["tokens"].tolist()
        n = min(len(Of["logits"]), len(Pf["logits"]))
        res.append({
            "image": f"{c['width']}x{c['height']}",
            "tokens_equal": free_o == free_p,
            "first_diff": next((t for t, (a, b) in enumerate(zip(free_o, free_p)) if a != b),
                               None if len(free_o) == len(free_p) else min(len(free_o), len(free_p))),
            "logits_max_abs": _maxdiff(Of["logits"][:n], Pf["logits"][:n]),
            "logits_rel": _rel(Of["logits"][:n], Pf["logits"][:n]),
        })
    return res


def compare_batch(out: Path, case: dict, oj: dict) -> dict:
    """Ours batched (one pass) against the official per image, and against ours one by one."""
    B = dict(np.load(out / "ours_batch.npz"))
    items = B["items"].tolist()
    rows = []
    for k, i in enumerate(items):
        P = dict(np.load(out / f"official_forced{i}.npz"))
        single = out / f"ours_one-pass{i}.npz"
        S = dict(np.load(single)) if single.is_file() else None
        n = sum(1 for key in B if key.startswith(f"item{k}_prob"))
        for j in range(n):
            pb = B[f"item{k}_prob{j}"]
            row = {"item": k, "image": i, "seg": j}
            if f"prob{j}" in P:
                mm = _mask_metrics(pb, P[f"prob{j}"], P[f"mask{j}"])
                row.update(iou=mm["iou"], max_abs_prob_diff=mm["max"])
            if S is not None and f"prob{j}" in S:
                mm = _mask_metrics(pb, S[f"prob{j}"], S[f"prob{j}"] > 0.5)
                row.update(iou_vs_ours_single=mm["iou"], max_abs_prob_diff_vs_ours_single=mm["max"])
            rows.append(row)
    scripts = [case["images"][i]["script"] for i in items]
    return {
        "batch": len(items),
        "seconds": oj["batch"]["seconds"],
        "tokens_equal_script": all(B[f"tokens{k}"].tolist() == s for k, s in enumerate(scripts)),
        "n_masks": len(rows),
        "min_mask_iou": min((r["iou"] for r in rows if "iou" in r), default=None),
        "max_abs_prob_diff": max((r["max_abs_prob_diff"] for r in rows if "max_abs_prob_diff" in r), default=None),
        "min_iou_vs_ours_single": min((r["iou_vs_ours_single"] for r in rows if "iou_vs_ours_single" in r),
                                      default=None),
        "max_prob_diff_vs_ours_single": max((r["max_abs_prob_diff_vs_ours_single"] for r in rows
                                             if "max_abs_prob_diff_vs_ours_single" in r), default=None),
        "masks": rows,
    }


def compare(out: Path, case: dict) -> dict:
    oj = json.loads((out / "ours.json").read_text())
    fj = json.loads((out / "official.json").read_text())
    res = {
        "official_env": {k: fj[k] for k in ("transformers", "torch", "torchvision")},
        "official_missing_keys_used_by_images": [
            k for k in fj["missing_keys"] if not k.removeprefix("grounding_encoder.sam2_model.").startswith(VIDEO_ONLY)],
        "official_missing_keys_video_memory_only": sum(
            1 for k in fj["missing_keys"] if k.removeprefix("grounding_encoder.sam2_model.").startswith(VIDEO_ONLY)),
        "official_unexpected_keys": fj["unexpected_keys"],
        "official_mismatched_keys": fj["mismatched_keys"],
        # left on the meta device by the loader (4.49) and zero-filled: must all be video-memory tensors
        "official_zero_filled_used_by_images": [
            k for k in fj.get("meta_zero_filled", [])
            if not k.removeprefix("grounding_encoder.sam2_model.").startswith(VIDEO_ONLY)],
        "official_zero_filled_video_memory_only": sum(
            1 for k in fj.get("meta_zero_filled", [])
            if k.removeprefix("grounding_encoder.sam2_model.").startswith(VIDEO_ONLY)),
        "load_s": {"ours": oj["load_s"], "official": fj["load_s"]},
        "decodes": {d: compare_decode(out, case, d, oj, fj) for d in case["decodes"]},
        "free_greedy": compare_free(out, case),
    }
    if {"one-pass", "steps"} <= set(case["decodes"]):
        res["ours_one_pass_vs_steps"] = compare_ours(out, case, "one-pass", "steps")
    if "batch" in oj:
        res["batch"] = compare_batch(out, case, oj)
    return res


def compare_ours(out: Path, case: dict, a: str, b: str) -> dict:
    """Ours against ours, two decode modes: the same weights and arithmetic in another order, i.e. how
    far bf16 rounding alone moves these masks (a floor for any comparison with other code)."""
    return _masks_vs(out, case, f"ours_{a}", f"ours_{b}")


def _masks_vs(out: Path, case: dict, a: str, b: str) -> dict:
    """Every mask of the runs saved as `a{i}.npz` against `b{i}.npz` (b's `prob > 0.5` the reference)."""
    rows = []
    for i in range(len(case["images"])):
        A, B = dict(np.load(out / f"{a}{i}.npz")), dict(np.load(out / f"{b}{i}.npz"))
        rows += [_mask_metrics(A[f"prob{j}"], B[f"prob{j}"], B[f"prob{j}"] > 0.5)
                 for j in range(sum(1 for k in A if k.startswith("prob"))) if f"prob{j}" in B]
    return {"mask_iou": [x["iou"] for x in rows], "max_abs_prob_diff": [x["max"] for x in rows],
            "mean_abs_prob_diff": [x["mean"] for x in rows], "pixels_flipped": [x["flip"] for x in rows]}


def compare_truth(out: Path, case: dict) -> dict:
    """The official run at --dtype and ours (each decode mode) against the fp32 truth in out/truth."""
    res = {"official": _masks_vs(out, case, "official_forced", "truth/official_forced")}
    for d in case["decodes"]:
        res[f"ours_{d}"] = _masks_vs(out, case, f"ours_{d}", "truth/official_forced")
    return res


def stages_vs_truth(out: Path, case: dict) -> dict:
    """Per stage, the worst image's error against the fp32 truth, for the official run and ours: the
    first stage where ours drifts further than the official code is where our rounding differs."""
    runs = ["official_forced"] + [f"ours_{d}" for d in case["decodes"]]
    res: dict = {run.removesuffix("_forced"): {} for run in runs}
    for i in range(len(case["images"])):
        T = dict(np.load(out / f"truth/official_forced{i}.npz"))
        for run in runs:
            A = np.load(out / f"{run}{i}.npz")
            for k in STAGES + tuple(f"prob{j}" for j in range(8)):
                if k not in A or k not in T:
                    continue
                r = _rms_rel(A[k], T[k])  # None: sizes differ (max_abs then names the shapes)
                w = res[run.removesuffix("_forced")].setdefault(k, {"max_abs": 0.0, "rms_rel": 0.0})
                if r is None or w["rms_rel"] is None:
                    w.update(max_abs=_maxdiff(A[k], T[k]), rms_rel=None)
                else:
                    w["max_abs"], w["rms_rel"] = max(w["max_abs"], _maxdiff(A[k], T[k])), max(w["rms_rel"], r)
    return res


def _worst(x: dict) -> dict:
    return {"min_mask_iou": min(x["mask_iou"], default=None),
            "max_abs_prob_diff": max(x["max_abs_prob_diff"], default=None),
            "max_mean_abs_prob_diff": max(x["mean_abs_prob_diff"], default=None),
            "max_pixels_flipped": max(x["pixels_flipped"], default=None)}


TRUTH_MEASURES = {"mask_iou": 1, "max_abs_prob_diff": -1, "mean_abs_prob_diff": -1, "pixels_flipped": -1}  # +1: higher is closer


def paired_vs_truth(t: dict) -> dict:
    """Each of our runs against the official bf16 run, mask by mask, on their distance from the fp32
    truth: how many masks ours is closer on, both means and the Wilcoxon signed-rank p (report/stats),
    per measure. The worst case alone cannot rank two implementations whose rounding noise is larger
    than their difference; paired over many masks it can."""
    from sa2va_queue.report.stats import paired_comparison

    off = t["official"]
    out: dict = {}
    for run, v in t.items():
        if run == "official":
            continue
        out[run] = {}
        for m, sign in TRUTH_MEASURES.items():
            c = paired_comparison(v[m], off[m])
            out[run][m] = {"n": c["n"], "mean_official": c["mean_b"], "mean_ours": c["mean_a"],
                           "ours_closer": sum(sign * (a - b) > 0 for a, b in zip(v[m], off[m])),
                           "official_closer": sum(sign * (a - b) < 0 for a, b in zip(v[m], off[m])),
                           "p_value": c["p_value"]}
    return out


def summarise(r: dict, iou_min: float, prob_max: float) -> dict:
    """Per decode mode (and the batch): worst IoU and probability difference against the bar."""
    out = {"official_loads_every_key_images_use": not r["official_missing_keys_used_by_images"]
           and not r["official_mismatched_keys"] and not r.get("official_zero_filled_used_by_images"),
           "free_greedy_equal": all(x["tokens_equal"] for x in r["free_greedy"])}
    for d, images in r["decodes"].items():
        ious = [x for im in images for x in im["mask_iou"]]
        pd = [x for im in images for x in im["max_abs_prob_diff"]]
        answers = all(im["answer_equal"] and im["n_seg"][0] == im["n_seg"][1] for im in images)
        out[d] = {
            "min_mask_iou": min(ious) if ious else None,
            "max_abs_prob_diff": max(pd) if pd else None,
            "answers_equal": answers,
            "prompt_ids_equal": all(im["prompt_ids_equal"] for im in images),
            "ok": bool(ious) and min(ious) >= iou_min and max(pd) <= prob_max and answers,
        }
    if "ours_one_pass_vs_steps" in r:
        x = r["ours_one_pass_vs_steps"]
        out["ours_one_pass_vs_steps"] = {"min_mask_iou": min(x["mask_iou"], default=None),
                                         "max_abs_prob_diff": max(x["max_abs_prob_diff"], default=None)}
    if "vs_fp32_truth" in r:  # no "ok": the bar stays the one against the official run
        t = r["vs_fp32_truth"]
        out["vs_fp32_truth"] = {"error": t["error"]} if "error" in t else {k: _worst(v) for k, v in t.items()}
        if "error" not in t:
            out["vs_fp32_truth_paired"] = paired_vs_truth(t)
    if "stages_vs_fp32_truth" in r:  # rms_rel per stage and run: where ours starts to drift
        out["stages_rms_rel_vs_fp32_truth"] = {
            stage: {run: v[stage].get("rms_rel") for run, v in r["stages_vs_fp32_truth"].items() if stage in v}
            for stage in next(iter(r["stages_vs_fp32_truth"].values()))}
    if "batch" in r:
        b = r["batch"]
        out["batch"] = {k: b[k] for k in ("batch", "min_mask_iou", "max_abs_prob_diff", "tokens_equal_script",
                                          "min_iou_vs_ours_single", "max_prob_diff_vs_ours_single")}
        out["batch"]["ok"] = (b["min_mask_iou"] is not None and b["min_mask_iou"] >= iou_min
                              and b["max_abs_prob_diff"] <= prob_max and b["tokens_equal_script"])
    out["ok"] = out["official_loads_every_key_images_use"] and all(
        v["ok"] for k, v in out.items() if isinstance(v, dict) and "ok" in v)
    return out


def official(args, family: str, site: Path, out: Path, dtype: str, no_autocast: bool):
    """The official side in a subprocess on out/case.json (old transformers first on its path);
    its output in out/official.log."""
    env = dict(os.environ)
    paths = [str(site)]  # the old transformers first; torch/numpy/PIL from this interpreter
    if family == "internlm2" and args.site_internlm2 is not None:
        paths.insert(0, str(args.site_internlm2.resolve()))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HF_MODULES_CACHE"] = str(out / "hf_modules")
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "official", "--case", str(out / "case.json"),
           "--device", args.device, "--dtype", dtype, "--out", str(out)]
    if no_autocast:
        cmd.append("--no-official-autocast")
    proc = subprocess.run(cmd, env=env, cwd=str(out), capture_output=True, text=True)
    (out / "official.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    return proc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-dir", type=Path, required=False, help="folder with the official projects/sa2va/hf/models/*.py")
    ap.add_argument("--site", type=Path, help="package dir with transformers 4.57 (+ tokenizers/huggingface_hub it "
                                              "accepts; timm, einops, peft, torchvision where this Python lacks them)")
    ap.add_argument("--site-internlm2", type=Path,
                    help="package dir with transformers <= 4.49 for the InternLM2 family (put before --site on "
                         "PYTHONPATH); the official InternLM2 code fails on 4.50+ (no GenerationMixin / generation_config)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES), help="tiny models of these families")
    ap.add_argument("--reference", help="real-size published shapes instead of --families, e.g. Sa2VA-1B,Sa2VA-8B")
    ap.add_argument("--shards", type=int, default=2, help="weight files of a --reference folder")
    ap.add_argument("--keep-folders", action="store_true", help="keep each model folder (default: deleted when done)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--logit-scale", type=float, default=0.0,
                    help="> 0: scale SAM2's mask logits to this max |low-res logit| (a trained model's range, e.g. "
                         "20) before saving the random weights (calibrate_logits); 0: raw random weights")
    ap.add_argument("--cases", type=int, default=len(DEFAULT_CASES),
                    help=f"N cases: the {len(DEFAULT_CASES)} kinds (a 512x512 frame with one [SEG], a 400x300 "
                         "frame with 13 tiles and two [SEG]s) in turn, each with its own random image; 1 for a quick "
                         "run on the CPU, more to rank two bf16 runs against the truth (rounding moves single masks "
                         "more than the implementations differ: bench/parity_decoder.py)")
    ap.add_argument("--free-tokens", type=int, default=8, help="greedy tokens compared without a script")
    ap.add_argument("--no-official-autocast", action="store_true",
                    help="disable the official bf16 CUDA autocast around SAM2 decoding (isolates its effect on GPU)")
    ap.add_argument("--truth", choices=["none", "fp32"], default="none",
                    help="fp32: run the official side again in fp32 (SAM2 autocast off, TF32 off) on the same "
                         "folder and cases and compare the official --dtype run and ours with it")
    ap.add_argument("--iou-min", type=float, default=0.995)
    ap.add_argument("--prob-max", type=float, default=0.005)
    ap.add_argument("--decode", default="one-pass,steps",
                    help="ours, scripted answer: one-pass (in one forward with the prompt, the default path) and/or "
                         "steps (fed step by step through the KV cache as the official code does)")
    ap.add_argument("--batch", type=int, default=4, help="ours: the cases cycled to this many images in one batch "
                                                         "(one pass), each against the official run; 0: off")
    ap.add_argument("--role", choices=["main", "official"], default="main", help=argparse.SUPPRESS)
    ap.add_argument("--case", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.role == "official":
        case = json.loads(args.case.read_text())
        out = args.case.parent
        run_official(Path(case["folder"]), case, args.device, args.dtype, out, not args.no_official_autocast)
        return 0

    if args.official_dir is None or args.site is None:
        ap.error("--official-dir and --site are required")
    decodes = [d.strip() for d in args.decode.split(",") if d.strip()]
    if not decodes or any(d not in ("one-pass", "steps") for d in decodes):
        ap.error(f"--decode {args.decode!r}: one-pass and/or steps")
    # our package as installed (editable here, pip --target on the GPU machine): ROOT on sys.path would
    # shadow it with the checkout's sa2va_queue/ folder, which lacks the layers mapped in from worker/ etc.
    import torch

    from sa2va_queue.worker.backends.sa2va.config import REFERENCE_MODELS, Sa2VAConfig
    from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline
    from sa2va_queue.worker.backends.sa2va.processing import load_tokenizer

    torch.manual_seed(0)
    official_dir, site = args.official_dir.resolve(), args.site.resolve()
    if not (official_dir / "modeling_sa2va_chat.py").is_file():
        ap.error(f"{official_dir} has no modeling_sa2va_chat.py")
    if args.reference:
        names = [r.strip() for r in args.reference.split(",") if r.strip()]
        unknown = [n for n in names if n not in REFERENCE_MODELS]
        if unknown:
            ap.error(f"--reference {','.join(unknown)}: known {', '.join(REFERENCE_MODELS)}")
        targets = [(n, REFERENCE_MODELS[n][0]) for n in names]
    else:
        targets = [(f.strip(), f.strip()) for f in args.families.split(",") if f.strip()]
    report = {"device": args.device, "dtype": args.dtype, "decodes": decodes, "batch": args.batch,
              "logit_scale": args.logit_scale,
              "torch": torch.__version__, "models": {}}
    if args.truth != "none":
        report["truth"] = f"official code in {args.truth}, SAM2 autocast off, same folder and cases"
    if args.device == "cuda":
        report["gpu"] = torch.cuda.get_device_name(0)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, family in targets:
        out = (args.out / name).resolve()
        out.mkdir(parents=True, exist_ok=True)
        folder = out / "model"
        t0 = time.perf_counter()
        if args.reference:
            calib = write_reference_folder(name, args.seed, official_dir, folder, args.device, args.dtype, args.shards,
                                           args.logit_scale)
        else:
            calib = write_folder(family, args.seed, official_dir, folder, args.logit_scale)
        write_s = time.perf_counter() - t0
        tok = load_tokenizer(folder)
        script = Sa2VAPipeline.__new__(Sa2VAPipeline)
        script.tokenizer = tok
        script.config = Sa2VAConfig.from_folder(folder)
        images = []
        for i, (w, h, answer) in enumerate(DEFAULT_CASES[k % len(DEFAULT_CASES)] for k in range(args.cases)):
            np.save(out / f"image{i}.npy", make_image(w, h, args.seed * 100 + i))
            images.append({"width": w, "height": h, "answer": answer, "script": script._script(answer)})
        case = {"folder": str(folder), "prompt": PROMPT, "images": images, "free_tokens": args.free_tokens,
                "sam_autocast": not args.no_official_autocast,  # ours follows the same precision policy
                "decodes": decodes, "batch": args.batch}
        (out / "case.json").write_text(json.dumps(case, indent=2))
        t1 = time.perf_counter()
        run_ours(folder, case, args.device, args.dtype, out)
        ours_s = time.perf_counter() - t1
        t1 = time.perf_counter()
        proc = official(args, family, site, out, args.dtype, args.no_official_autocast)
        official_s = time.perf_counter() - t1
        truth = None
        if args.truth == "fp32" and proc.returncode == 0:
            tdir = out / "truth"
            tdir.mkdir(exist_ok=True)
            (tdir / "case.json").write_text(json.dumps({**case, "truth": True, "sam_autocast": False}, indent=2))
            for i in range(len(images)):
                shutil.copy2(out / f"image{i}.npy", tdir / f"image{i}.npy")
            t1 = time.perf_counter()
            truth = official(args, family, site, tdir, "fp32", True)
            truth_s = time.perf_counter() - t1
        if not args.keep_folders:
            shutil.rmtree(folder, ignore_errors=True)
        if proc.returncode != 0:
            hint = ("; InternLM2 needs transformers <= 4.49: pass --site-internlm2"
                    if family == "internlm2" and args.site_internlm2 is None else "")
            report["models"][name] = {"error": f"official side failed (rc {proc.returncode}){hint}",
                                      "log_tail": (proc.stdout + proc.stderr)[-3000:]}
            continue
        res = compare(out, case)
        res["logit_calibration"] = calib or None
        res["seconds"] = {"write_folder": round(write_s, 1), "ours": round(ours_s, 1),
                          "official": round(official_s, 1), "total": round(time.perf_counter() - t0, 1)}
        if truth is not None:
            res["seconds"]["official_fp32_truth"] = round(truth_s, 1)
            if truth.returncode == 0:
                res["stages_vs_fp32_truth"] = stages_vs_truth(out, case)
            res["vs_fp32_truth"] = compare_truth(out, case) if truth.returncode == 0 else {
                "error": f"fp32 truth run failed (rc {truth.returncode})",
                "log_tail": (truth.stdout + truth.stderr)[-3000:]}
        report["models"][name] = res
        print(json.dumps({name: summarise(res, args.iou_min, args.prob_max), "seconds": res["seconds"]}),
              file=sys.stderr, flush=True)
        report["summary"] = {n: summarise(r, args.iou_min, args.prob_max) for n, r in report["models"].items()
                             if "error" not in r}
        (args.out / "parity.json").write_text(json.dumps(report, indent=2))  # so far, in case a later model fails
    summary = {}
    for name, r in report["models"].items():
        summary[name] = {"ok": False, "error": r["error"]} if "error" in r else summarise(r, args.iou_min, args.prob_max)
    report["summary"] = summary
    report["bar"] = {"iou_min": args.iou_min, "prob_max": args.prob_max}
    text = json.dumps(report, indent=2)
    (args.out / "parity.json").write_text(text)
    print(text)
    return 0 if summary and all(s.get("ok") for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
