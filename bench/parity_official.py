"""Parity of our Sa2VA implementation against the OFFICIAL remote code, on identical random weights.

Two processes per model family:
  ours      (this venv, transformers 5): build a small random model, save it in the official HF
            layout (+ the official python files from --official-dir, auto_map'ed), load that folder
            with our loader, run our pipeline with a scripted answer, save every stage to .npz.
  official  (subprocess, PYTHONPATH=--site first, i.e. transformers 4.57): AutoModel.from_pretrained(
            folder, trust_remote_code=True) and `predict_forward` on the same images. Only the choice
            of answer tokens is changed: a LogitsProcessor passed to the official
            `language_model.generate` call keeps only the scripted token at each step, so prompt
            building, KV-cached generation, the [SEG] hidden-state selection, SAM2 and the mask
            post-processing all run the official code. The probability map is recomputed from the
            logits that `language_embd_inference` returns, with the same two ops predict_forward
            applies before its `> 0.5`; the returned bool masks are kept and checked against it.

Geometry ("official"): the LLM and InternViT are tiny in width/depth but use the real 448-px tiles
with 14-px patches (256 tokens a tile) and the real SAM2 Hiera-L at 1024 px (random weights), because
`predict_forward` hard-codes 448/14/1024 and `SAM2()` hard-codes Hiera-L; so the official code runs
without any patch to its sizes. On the CPU, `.cuda()` is made a no-op and the SAM2 inference state's
hard-coded `torch.device("cuda")` is replaced by the CPU (nothing else is patched).

    python bench/parity_official.py --official-dir .parity/official --site .parity/site \
        --device cpu --out .parity/run [--families qwen2,internvl3-qwen2.5,internlm2] [--dtype fp32] \
        [--decode one-pass|steps]

Prints JSON: per family and image the mask IoU, max |probability difference|, answer equality,
the stage-by-stage max abs differences, and a summary. This file contains no official code.
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


def write_folder(family: str, seed: int, official_dir: Path, folder: Path) -> None:
    from sa2va_queue.worker.backends.sa2va.tiny import write_official_folder

    model, tokenizer, config = build_ours(family, seed)
    if folder.exists():
        shutil.rmtree(folder)
    write_official_folder(model, tokenizer, config, folder, video_memory=True)
    # transformers 5 writes tokenizer_class "TokenizersBackend", unknown to 4.x; both know this one
    tc = folder / "tokenizer_config.json"
    d = json.loads(tc.read_text())
    d["tokenizer_class"] = "PreTrainedTokenizerFast"
    d.pop("backend", None)
    tc.write_text(json.dumps(d, indent=2))
    for f in sorted(official_dir.glob("*.py")):
        shutil.copy2(f, folder / f.name)


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


    loaded = load_folder(folder, dtype=dtype, device=device)
    m, tok, cfg = loaded.model, loaded.tokenizer, loaded.config
    rec = Recorder()

    def wrap(name, keys):
        orig = getattr(m, name)

        def f(*a, **k):
            r = orig(*a, **k)
            keys(r, a, k)
            return r

        setattr(m, name, f)

    wrap("extract_feature", lambda r, a, k: rec.add("vit_embeds", r))
    wrap("_logits", lambda r, a, k: rec.add("logits", r))
    wrap("language_embeddings", lambda r, a, k: (rec.add("seg_hidden", a[0]), rec.add("lang_embd", r)))
    wrap("sam_image_features", lambda r, a, k: [rec.add(f"sam_feat{i}", x) for i, x in enumerate(r)])
    wrap("sam_decode", lambda r, a, k: rec.add("low_res_best", r))
    def dec_hook(mod, a, o):  # must return None (a returned value would replace the output)
        rec.add("low_res_multi", o[0][:, 0])
        rec.add("iou_pred", o[1][:, 0])
        rec.add("obj_score", o[3].reshape(-1))

    m.grounding_encoder.mask_decoder.register_forward_hook(dec_hook)
    results = {}
    for i, c in enumerate(case["images"]):
        img = np.load(out / f"image{i}.npy")
        for mode in ("forced", "free"):
            rec.data = {}
            if mode == "forced":
                pipe = Sa2VAPipeline(m, tok, cfg, force_answer=c["answer"], sam_autocast=case["sam_autocast"],
                                     one_pass=case.get("decode", "one-pass") == "one-pass")
            else:  # plain greedy steps: their logits are compared with the official ones step by step
                pipe = Sa2VAPipeline(m, tok, cfg, max_new_tokens=case["free_tokens"], sam_autocast=case["sam_autocast"],
                                     draft_answer=None)
            prep = pipe.prepare(img, case["prompt"])
            t0 = time.perf_counter()
            res = pipe.run([prep])[0]
            dt = time.perf_counter() - t0
            arrays = {
                "prompt_ids": np.array(prep.input_ids),
                "pixel_values": prep.pixel_values.numpy(),
                "sam_pixel_values": prep.sam_pixel_values.numpy()[None],
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
            np.savez(out / f"ours_{mode}{i}.npz", **arrays)
            results[f"{mode}{i}"] = {"text": res.text, "seconds": round(dt, 3), "n_seg": res.n_seg}
    (out / "ours.json").write_text(json.dumps(results, indent=2))


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
    tv = _import_torchvision()
    import torch.nn.functional as F
    import transformers
    from PIL import Image
    from transformers import AutoModel, AutoTokenizer, LogitsProcessor, LogitsProcessorList

    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    model, info = AutoModel.from_pretrained(
        str(folder), trust_remote_code=True, torch_dtype=tdtype, output_loading_info=True
    )
    model = model.to(device).eval()
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
    if not autocast:
        import contextlib

        sam_mod.torch = type("T", (), {"__getattr__": lambda s, n: getattr(torch, n),
                                       "autocast": staticmethod(lambda *a, **k: contextlib.nullcontext())})()

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
            t0 = time.perf_counter()
            with torch.no_grad():
                ret = model.predict_forward(image=img, text=case["prompt"], tokenizer=tokenizer)
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


def _strip_stop(text: str) -> str:
    """predict_forward decodes the stop token too (`...<|im_end|>`); ours drops it."""
    for w in STOP_WORDS:
        if text.endswith(w):
            return text[: -len(w)].strip()
    return text


VIDEO_ONLY = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "no_mem_pos_enc", "no_obj_ptr",
              "obj_ptr_proj.", "obj_ptr_tpos_proj.", "mask_downsample.")


def compare(out: Path, case: dict) -> dict:
    oj = json.loads((out / "ours.json").read_text())
    fj = json.loads((out / "official.json").read_text())
    per_image = []
    for i, c in enumerate(case["images"]):
        O = dict(np.load(out / f"ours_forced{i}.npz"))
        P = dict(np.load(out / f"official_forced{i}.npz"))
        n_seg = sum(1 for k in O if k.startswith("prob"))
        n_seg_off = sum(1 for k in P if k.startswith("prob"))
        ious, pdiff, mean_pdiff, frac_flip = [], [], [], []
        for j in range(min(n_seg, n_seg_off)):
            mo, mp = O[f"prob{j}"] > 0.5, P[f"mask{j}"].astype(bool)
            union = np.logical_or(mo, mp).sum()
            ious.append(float(np.logical_and(mo, mp).sum() / union) if union else 1.0)
            d = np.abs(O[f"prob{j}"].astype(np.float64) - P[f"prob{j}"])
            pdiff.append(float(d.max()))
            mean_pdiff.append(float(d.mean()))
            frac_flip.append(float((mo != mp).mean()))
        # stage-by-stage (forced run)
        stages = {}
        for k in ("pixel_values", "sam_pixel_values", "vit_embeds", "seg_hidden", "lang_embd", "sam_feat0",
                  "sam_feat1", "sam_feat2", "low_res_multi", "iou_pred", "obj_score", "low_res_best"):
            stages[k] = {"max_abs": _maxdiff(O.get(k), P.get(k)), "rel": _rel(O.get(k), P.get(k))}
        lo, lp = O.get("logits"), P.get("logits")
        if lo is not None and lp is not None:
            n = min(len(lo), len(lp))
            stages["step_logits"] = {"max_abs": _maxdiff(lo[:n], lp[:n]), "rel": _rel(lo[:n], lp[:n])}
        # free greedy run
        Of, Pf = dict(np.load(out / f"ours_free{i}.npz")), dict(np.load(out / f"official_free{i}.npz"))
        free_o, free_p = Of["tokens"].tolist(), Pf["tokens"].tolist()
        per_image.append({
            "image": f"{c['width']}x{c['height']}",
            "answer": c["answer"],
            "n_seg": [n_seg, n_seg_off],
            "mask_iou": ious,
            "max_abs_prob_diff": pdiff,
            "mean_abs_prob_diff": mean_pdiff,
            "pixels_flipped": frac_flip,
            "official_mask_equals_recomputed_prob": [bool(P[f"mask_check{j}"]) for j in range(n_seg_off)],
            "answer_equal": oj[f"forced{i}"]["text"] == _strip_stop(fj[f"forced{i}"]["text"]),
            "answer_ours": oj[f"forced{i}"]["text"],
            "answer_official": fj[f"forced{i}"]["text"],
            "tokens_equal": O["tokens"].tolist() == P["tokens"].tolist(),
            "prompt_ids_equal": O["prompt_ids"].tolist() == P["prompt_ids"].tolist(),
            "n_prompt_tokens": int(len(O["prompt_ids"])),
            "free_greedy_tokens_equal": free_o == free_p,
            "free_greedy_first_diff": next((t for t, (a, b) in enumerate(zip(free_o, free_p)) if a != b),
                                           None if len(free_o) == len(free_p) else min(len(free_o), len(free_p))),
            "free_logits_max_abs": _maxdiff(Of["logits"][: min(len(Of["logits"]), len(Pf["logits"]))],
                                            Pf["logits"][: min(len(Of["logits"]), len(Pf["logits"]))]),
            "stages": stages,
            "seconds": {"ours": oj[f"forced{i}"]["seconds"], "official": fj[f"forced{i}"]["seconds"]},
        })
    return {
        "official_env": {k: fj[k] for k in ("transformers", "torch", "torchvision")},
        "official_missing_keys_used_by_images": [
            k for k in fj["missing_keys"] if not k.removeprefix("grounding_encoder.sam2_model.").startswith(VIDEO_ONLY)],
        "official_missing_keys_video_memory_only": sum(
            1 for k in fj["missing_keys"] if k.removeprefix("grounding_encoder.sam2_model.").startswith(VIDEO_ONLY)),
        "official_unexpected_keys": fj["unexpected_keys"],
        "official_mismatched_keys": fj["mismatched_keys"],
        "images": per_image,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official-dir", type=Path, required=False, help="folder with the official projects/sa2va/hf/models/*.py")
    ap.add_argument("--site", type=Path, help="package dir with transformers 4.x (+ timm, einops, peft, torchvision)")
    ap.add_argument("--site-internlm2", type=Path,
                    help="package dir with transformers <= 4.49 for the InternLM2 family (put before --site on "
                         "PYTHONPATH); the official InternLM2 code fails on 4.50+ (no GenerationMixin / generation_config)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--families", default=",".join(DEFAULT_FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--free-tokens", type=int, default=8, help="greedy tokens compared without a script")
    ap.add_argument("--no-official-autocast", action="store_true",
                    help="disable the official bf16 CUDA autocast around SAM2 decoding (isolates its effect on GPU)")
    ap.add_argument("--iou-min", type=float, default=0.99)
    ap.add_argument("--decode", choices=["one-pass", "steps"], default="one-pass",
                    help="ours, scripted answer: in one forward with the prompt (the default path) or fed step by "
                         "step through the KV cache as the official code does")
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
    sys.path.insert(0, str(ROOT))
    import torch

    torch.manual_seed(0)
    official_dir, site = args.official_dir.resolve(), args.site.resolve()
    if not (official_dir / "modeling_sa2va_chat.py").is_file():
        ap.error(f"{official_dir} has no modeling_sa2va_chat.py")
    report = {"device": args.device, "dtype": args.dtype, "decode": args.decode, "torch": torch.__version__,
              "families": {}}
    for family in [f.strip() for f in args.families.split(",") if f.strip()]:
        out = (args.out / family).resolve()
        out.mkdir(parents=True, exist_ok=True)
        folder = out / "model"
        t0 = time.perf_counter()
        write_folder(family, args.seed, official_dir, folder)
        from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline
        from sa2va_queue.worker.backends.sa2va.processing import load_tokenizer

        tok = load_tokenizer(folder)
        images = []
        for i, (w, h, answer) in enumerate(DEFAULT_CASES):
            np.save(out / f"image{i}.npy", make_image(w, h, args.seed * 100 + i))
            script = Sa2VAPipeline.__new__(Sa2VAPipeline)
            script.tokenizer = tok
            from sa2va_queue.worker.backends.sa2va.config import Sa2VAConfig

            script.config = Sa2VAConfig.from_folder(folder)
            images.append({"width": w, "height": h, "answer": answer, "script": script._script(answer)})
        case = {"folder": str(folder), "prompt": PROMPT, "images": images, "free_tokens": args.free_tokens,
                "sam_autocast": not args.no_official_autocast,  # ours follows the same precision policy
                "decode": args.decode}
        (out / "case.json").write_text(json.dumps(case, indent=2))
        run_ours(folder, case, args.device, args.dtype, out)
        env = dict(os.environ)
        paths = [str(site)]  # the old transformers first; torch/numpy/PIL from this interpreter
        if family == "internlm2" and args.site_internlm2 is not None:
            paths.insert(0, str(args.site_internlm2.resolve()))
        env["PYTHONPATH"] = os.pathsep.join(paths)
        env["HF_MODULES_CACHE"] = str(out / "hf_modules")
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--role", "official", "--case", str(out / "case.json"),
               "--device", args.device, "--dtype", args.dtype, "--out", str(out)]
        if args.no_official_autocast:
            cmd.append("--no-official-autocast")
        proc = subprocess.run(cmd, env=env, cwd=str(out), capture_output=True, text=True)
        (out / "official.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        if proc.returncode != 0:
            hint = ("; InternLM2 needs transformers <= 4.49: pass --site-internlm2"
                    if family == "internlm2" and args.site_internlm2 is None else "")
            report["families"][family] = {"error": f"official side failed (rc {proc.returncode}){hint}",
                                          "log_tail": (proc.stdout + proc.stderr)[-3000:]}
            continue
        res = compare(out, case)
        res["seconds_total"] = round(time.perf_counter() - t0, 1)
        report["families"][family] = res
    summary = {}
    for fam, r in report["families"].items():
        if "error" in r:
            summary[fam] = {"ok": False, "error": r["error"]}
            continue
        ious = [x for im in r["images"] for x in im["mask_iou"]]
        pd = [x for im in r["images"] for x in im["max_abs_prob_diff"]]
        summary[fam] = {
            "min_mask_iou": min(ious) if ious else None,
            "max_abs_prob_diff": max(pd) if pd else None,
            "answers_equal": all(im["answer_equal"] for im in r["images"]),
            "prompt_ids_equal": all(im["prompt_ids_equal"] for im in r["images"]),
            "free_greedy_equal": all(im["free_greedy_tokens_equal"] for im in r["images"]),
            "ok": bool(ious) and min(ious) >= args.iou_min and all(im["answer_equal"] for im in r["images"]),
        }
    report["summary"] = summary
    text = json.dumps(report, indent=2)
    (args.out / "parity.json").write_text(text)
    print(text)
    return 0 if summary and all(s.get("ok") for s in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
