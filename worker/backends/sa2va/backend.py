"""The `sa2va` backend: Sa2VA behind the project's SegmentationModel interface.

Spec: `sa2va:/path/to/hf_folder?dtype=bf16&threshold=0.5&gpus=0,1&max_memory=20GiB`
      `sa2va:tiny?family=qwen2&seed=0&force_answer=Sure, [SEG].`   (tiny random model, in-process)
Options:
    dtype           bf16 | fp16 | fp32 (default bf16; fp32 for `tiny`)
    threshold       probability threshold of the mask (default 0.5)
    gpus, max_memory  with setup('auto'): balanced device map over these GPUs (placement.py)
    force_answer    scripted answer fed token by token instead of greedy decoding (tests, benchmarks)
    max_new_tokens  generation limit (default 2048, as predict_forward)
    max_tiles       dynamic tiling limit (default 12, as predict_forward)
    seg_merge       first | max: which mask when the answer has several [SEG] (default first)
    sam_autocast    1 | 0: SAM2 under bf16 autocast on CUDA, as the official code (default 1)
    sam_window_major 1 | 0: SAM2's Hiera trunk with tokens kept in window order between blocks
                    (hiera.py; the same values, fewer copies; default 1)
    family, seed    `tiny` only
setup(compile=True) (the worker's SA2VA_COMPILE=1): SAM2 image features and the language model's
    norm/gate ops through torch.compile on CUDA, compiled in setup() (about 90 s cold, 20 s with
    inductor's cache warm); a runtime choice, not part of the model version: same masks up to bf16
    rounding (tests/unit/test_sa2va_model.py)
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sa2va_queue.core.exceptions import ConfigError, InputError, ModelError
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.worker.backends.base import (
    SegmentationModel,
    SegmentationRequest,
    SegmentationResult,
    VersionInfo,
)

log = logging.getLogger(__name__)

TINY = "tiny"


def default_device(spec: ModelSpec | None = None) -> str:
    """The device a Sa2VA worker uses when none is given: `cuda` when a GPU is visible, else `cpu`;
    `auto` (a device map) when the spec names several GPUs with `gpus=`."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    gpus = (spec.options.get("gpus") or "") if spec is not None else ""
    return "auto" if len([g for g in gpus.split(",") if g.strip()]) > 1 else "cuda"


def _int_option(spec: ModelSpec, key: str, default: int, lo: int, hi: int) -> int:
    raw = spec.options.get(key)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"model option {key}={raw!r} in {spec} is not an integer") from None
    if not lo <= value <= hi:
        raise ConfigError(f"model option {key}={value} in {spec} must be in {lo}..{hi}")
    return value


class Sa2VAModel(SegmentationModel):
    name = "sa2va"

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        from .checkpoint import parse_dtype
        from .config import FAMILIES, MAX_NEW_TOKENS, MAX_TILES
        from .placement import parse_bytes, parse_gpus

        # option names, types and ranges are checked by ModelSpec (sa2va_queue/core/modelspec.py)
        self.is_tiny = spec.path == TINY
        self.dtype_name = spec.options.get("dtype", "fp32" if self.is_tiny else "bf16").lower()
        self.dtype = parse_dtype(self.dtype_name)
        self.threshold = float(spec.value("threshold"))
        self.sam_autocast = spec.value("sam_autocast") == "1"  # ModelSpec gives flags as "1" / "0"
        self.sam_window_major = spec.value("sam_window_major") == "1"
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"threshold={self.threshold} in {spec} must be between 0 and 1")
        self.gpus = parse_gpus(spec.options.get("gpus"))
        self.max_memory = spec.options.get("max_memory")
        if self.max_memory is not None:
            parse_bytes(self.max_memory)
        self.force_answer = spec.options.get("force_answer")
        self.max_new_tokens = _int_option(spec, "max_new_tokens", MAX_NEW_TOKENS, 1, 32768)
        self.max_tiles = _int_option(spec, "max_tiles", MAX_TILES, 1, 40)
        self.seg_merge = spec.options.get("seg_merge", "first")
        if self.seg_merge not in ("first", "max"):
            raise ConfigError(f"seg_merge={self.seg_merge!r} in {spec}: use first or max")
        self.seed = _int_option(spec, "seed", 0, 0, 2**31 - 1)
        self.family = spec.options.get("family", "qwen2") if self.is_tiny else None
        if self.is_tiny and self.family not in FAMILIES:
            raise ConfigError(f"family={self.family!r} in {spec}: known {sorted(FAMILIES)}")
        if not self.is_tiny and ("family" in spec.options or "seed" in spec.options):
            raise ConfigError(f"{spec}: family/seed apply only to sa2va:tiny")
        if not self.is_tiny:
            folder = Path(spec.path)
            if not (folder / "config.json").is_file():
                raise ConfigError(f"{spec}: {folder} is not a Sa2VA HF folder (no config.json)")
        self.pipeline = None
        self.placement = None
        self._hash: str | None = None
        self._hash_job = None  # Future of the checkpoint hash, started with setup()

    # ------------------------------------------------------------------ setup
    def setup(self, device: str | None = "cpu", *, compile: bool = False) -> None:
        """`device`: cpu, cuda[:N], auto (a device map over the visible GPUs or `gpus=`), or None:
        default_device(). `compile`: see the module docstring."""
        if self.pipeline is not None:
            return
        import torch

        if device is None:
            device = default_device(self.spec)

        from .pipeline import Sa2VAPipeline

        if self.is_tiny:
            from .tiny import build_tiny

            model, tokenizer, config = build_tiny(self.family, self.seed, dtype=self.dtype)
            target = "cpu" if device == "auto" and not torch.cuda.is_available() else device
            if target == "auto":
                target = "cuda"
            model = model.to(target)
        else:
            from .checkpoint import load_folder
            from .weightfiles import start_folder_hash

            if self._hash is None and self._hash_job is None:  # beside the load (or started by the worker command)
                self._hash_job = start_folder_hash(self.spec.path)
            device_map = None
            if device == "auto":
                gpus = self.gpus or (list(range(torch.cuda.device_count())) if torch.cuda.is_available() else [])
                if gpus:
                    from .config import Sa2VAConfig
                    from .placement import compute_placement, device_map_for_loading

                    cfg = Sa2VAConfig.from_folder(self.spec.path)
                    self.placement = compute_placement(cfg, gpus, self.max_memory, self.dtype)
                    device_map = device_map_for_loading(self.placement)
                    device = "cpu"
                else:
                    device = "cpu"
            loaded = load_folder(self.spec.path, dtype=self.dtype, device=device, device_map=device_map)
            log.info("%s", loaded.report.summary())
            model, tokenizer, config = loaded.model, loaded.tokenizer, loaded.config
        self.pipeline = Sa2VAPipeline(
            model, tokenizer, config, max_new_tokens=self.max_new_tokens, max_tiles=self.max_tiles,
            force_answer=self.force_answer, sam_autocast=self.sam_autocast, compile_sam=compile, compile_llm=compile,
            sam_window_major=self.sam_window_major,
        )
        spent = self.pipeline.warmup()  # compiles before the first batch (compile on CUDA)
        if spent:
            log.info("sa2va: compiled in %.1f s", spent)

    def _require(self):
        if self.pipeline is None:
            raise ModelError("sa2va model is not set up: call setup() before preprocess()/predict()")
        return self.pipeline

    # ------------------------------------------------------------------ version
    @property
    def version(self) -> VersionInfo:
        params: dict[str, Any] = {
            "dtype": self.dtype_name,
            "threshold": self.threshold,
            "max_new_tokens": self.max_new_tokens,
            "max_tiles": self.max_tiles,
            "seg_merge": self.seg_merge,
            "sam_autocast": self.sam_autocast,
        }
        if self.force_answer is not None:
            params["force_answer"] = self.force_answer
        if self.is_tiny:
            params.update(family=self.family, seed=self.seed, model="tiny")
        else:
            params["family"] = self._family_from_config()
        return VersionInfo(backend=self.name, params=params, checkpoint_hash=self._checkpoint_hash())

    def _family_from_config(self) -> str:
        if self.pipeline is not None:
            return self.pipeline.config.family
        from .config import Sa2VAConfig

        return Sa2VAConfig.from_folder(self.spec.path).family

    def _checkpoint_hash(self) -> str:
        if self._hash is None:
            if self.is_tiny:
                from .tiny import TINY_SAM2, build_tiny_tokenizer, tiny_official_config

                raw = tiny_official_config(self.family, len(build_tiny_tokenizer(self.family)))
                blob = json.dumps({"tiny": raw, "seed": self.seed, "sam2": TINY_SAM2}, sort_keys=True)
                self._hash = hashlib.sha256(blob.encode()).hexdigest()
            else:
                from .weightfiles import folder_hash

                self._hash = self._hash_job.result() if self._hash_job is not None else folder_hash(self.spec.path)
        return self._hash

    # ------------------------------------------------------------------ inference
    def preprocess(self, request: SegmentationRequest):
        pipe = self._require()
        try:
            return pipe.prepare(request.image, request.prompt)
        except InputError as exc:
            raise InputError(f"job {request.job_id}: {exc}") from None

    def predict(self, batch: Sequence[Any]) -> list[SegmentationResult]:
        pipe = self._require()
        outputs = pipe.run(list(batch))
        results = []
        for prepared, out in zip(batch, outputs):
            h, w = prepared.size
            if not out.probabilities:
                prob = np.zeros((h, w), np.float32)
                results.append(SegmentationResult(probability=prob, mask=np.zeros((h, w), bool), text=out.text,
                                                  no_segmentation=True))
                continue
            prob = out.probabilities[0] if self.seg_merge == "first" else np.maximum.reduce(out.probabilities)
            prob = np.asarray(prob, np.float32)
            results.append(SegmentationResult(probability=prob, mask=prob > self.threshold, text=out.text))
        if len(results) != len(batch):
            raise ModelError(f"sa2va produced {len(results)} results for {len(batch)} inputs")
        return results
