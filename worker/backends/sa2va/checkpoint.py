"""Load an official-layout Sa2VA HF folder into our model, with strict key accounting.

Folder: `config.json` (official field names), tokenizer files, and weights as `model.safetensors`,
sharded `*.safetensors` with `model.safetensors.index.json`, or `pytorch_model.bin` (+ index).
Every tensor in the folder must be used (or be one of the documented ignorable SAM2 video-memory
tensors) and every parameter of the model must be loaded; otherwise a ModelError lists the
missing / unexpected keys. The model is built on the meta device and each tensor is written once,
straight to the device its module is placed on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from sa2va_queue.core.exceptions import ModelError

from . import keymap
from .config import Sa2VAConfig

DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
          "fp32": torch.float32, "float32": torch.float32}
LM_HEAD_KEYS = ("language_model.lm_head.weight", "language_model.output.weight")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[str(name).lower()]
    except KeyError:
        from sa2va_queue.core.exceptions import ConfigError

        raise ConfigError(f"dtype={name!r}: use one of bf16, fp16, fp32") from None


def _list(keys, n: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - n} more" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


# ----------------------------------------------------------------------------------------------
# Weight files


def weight_files(folder: str | Path) -> list[Path]:
    """The weight files of a HF folder, in a fixed order; ModelError if there are none."""
    folder = Path(folder)
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                wm = json.loads(index.read_text())["weight_map"]
            except (OSError, KeyError, json.JSONDecodeError) as exc:
                raise ModelError(f"{index}: unreadable index ({exc})") from None
            files = sorted({folder / f for f in wm.values()})
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise ModelError(f"{index} names missing shard(s): {', '.join(absent)}")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    shards = sorted(folder.glob("*.safetensors"))
    if shards:
        return shards
    raise ModelError(
        f"{folder}: no weights (looked for model.safetensors, model.safetensors.index.json, *.safetensors, "
        "pytorch_model.bin)"
    )


class WeightSource:
    """Lazy key -> tensor access over a folder's weight files (safetensors opened, .bin mmap-loaded)."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._where: dict[str, Path] = {}
        self._bins: dict[Path, dict] = {}
        for f in files:
            if f.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as h:
                    for k in h.keys():
                        self._add(k, f)
            else:
                sd = _torch_load(f)
                self._bins[f] = sd
                for k in sd:
                    self._add(k, f)

    def _add(self, key: str, f: Path) -> None:
        if key in self._where:
            raise ModelError(f"tensor {key} appears in both {self._where[key].name} and {f.name}")
        self._where[key] = f

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        f = self._where[key]
        if f in self._bins:
            return self._bins[f][key]
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as h:
            return h.get_tensor(key)

    def shape(self, key: str) -> tuple[int, ...]:
        f = self._where[key]
        if f in self._bins:
            return tuple(self._bins[f][key].shape)
        from safetensors import safe_open

        with safe_open(str(f), framework="pt") as h:
            return tuple(h.get_slice(key).get_shape())


def _torch_load(path: Path) -> dict:
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ModelError(f"{path}: expected a state dict, found {type(sd).__name__}")
    return sd


# ----------------------------------------------------------------------------------------------
# Hashes


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def manifest_hash(folder: str | Path) -> str:
    """sha256 of manifest.json: the model version of a converted folder."""
    path = Path(folder) / "manifest.json"
    if not path.is_file():
        raise ModelError(f"{folder}: no manifest.json")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_hash(folder: str | Path) -> str:
    """manifest hash when the folder has one, else sha256 over (name, size, sha256) of each weight file."""
    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return manifest_hash(folder)
    h = hashlib.sha256()
    for f in weight_files(folder):
        h.update(f"{f.name}\0{f.stat().st_size}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Loading


@dataclass
class LoadReport:
    folder: str
    n_tensors: int = 0
    n_used: int = 0
    ignored: dict[str, str] = field(default_factory=dict)
    n_params: int = 0
    tied_embeddings: bool = False
    device_map: dict[str, str] | None = None

    def summary(self) -> str:
        reasons: dict[str, int] = {}
        for r in self.ignored.values():
            reasons[r] = reasons.get(r, 0) + 1
        ign = "; ".join(f"{n} ignored: {r}" for r, n in reasons.items())
        return f"{self.folder}: {self.n_used}/{self.n_tensors} tensors used, {self.n_params} parameters loaded" + (
            f", {ign}" if ign else ""
        )


def _tie_decision(raw_cfg: dict, keys) -> bool:
    """Tie lm_head to the embeddings only when the folder has no lm_head tensor and the config ties."""
    has_head = any(k in keys for k in LM_HEAD_KEYS)
    return (not has_head) and bool(raw_cfg.get("llm_config", {}).get("tie_word_embeddings", False))


def build_empty(config: Sa2VAConfig):
    from accelerate import init_empty_weights

    from .modeling import Sa2VAForSegmentation

    with init_empty_weights(include_buffers=False):
        return Sa2VAForSegmentation(config)


def expected_state(model, tied: bool) -> dict[str, tuple[int, ...]]:
    out = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if tied:
        out.pop("language_model.lm_head.weight", None)
    return out


def check_plan(plan: keymap.Plan, expected: dict[str, tuple[int, ...]], shape_of: Callable[[str], tuple[int, ...]],
               lm: keymap.LMShape, where: str) -> None:
    """Raise ModelError on unexpected, missing, doubly-filled or wrongly shaped tensors."""
    targets = plan.targets()
    unexpected = list(plan.unexpected)
    for op in plan.ops:
        for t in op.targets:
            if t not in expected:
                unexpected.append(f"{op.sources[0]} (-> {t})")
    missing = sorted(set(expected) - targets)
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): {_list(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing parameter(s): {_list(missing)}")
    if plan.duplicates:
        problems.append(f"{len(plan.duplicates)} parameter(s) filled twice: {_list(plan.duplicates)}")
    if not problems:
        bad = []
        for op in plan.ops:
            shapes = [torch.Size(shape_of(s)) for s in op.sources]
            got = op.apply([torch.empty(s, device="meta") for s in shapes], lm)
            for t, g in zip(op.targets, got):
                if tuple(g.shape) != expected[t]:
                    bad.append(f"{op.sources[0]}: {tuple(shapes[0])} -> {t} expects {expected[t]}")
        if bad:
            problems.append(f"{len(bad)} shape mismatch(es): {_list(bad, 10)}")
    if problems:
        raise ModelError(f"{where}: checkpoint does not match the model: " + " | ".join(problems))


def _device_for(key: str, device_map: dict[str, str | int | torch.device] | None, default) -> torch.device | str:
    if not device_map:
        return default
    best, best_len = None, -1
    for name, dev in device_map.items():
        if (name == "" or key == name or key.startswith(name + ".")) and len(name) > best_len:
            best, best_len = dev, len(name)
    if best is None:
        raise ModelError(f"device map does not place {key}")
    return f"cuda:{best}" if isinstance(best, int) else best


def load_weights_into(model, source: WeightSource, config: Sa2VAConfig, *, tied: bool, dtype: torch.dtype,
                      device="cpu", device_map=None, where: str = "checkpoint") -> LoadReport:
    from accelerate.utils import set_module_tensor_to_device

    plan = keymap.plan_official_to_ours(source.keys(), config.llm_arch)
    lm = keymap.lm_shape(config.text)
    expected = expected_state(model, tied)
    check_plan(plan, expected, source.shape, lm, where)
    report = LoadReport(folder=where, n_tensors=len(source.keys()), ignored=dict(plan.ignored), tied_embeddings=tied)
    for op in plan.ops:
        outs = op.apply([source.get(s) for s in op.sources], lm)
        for t, value in zip(op.targets, outs):
            dev = _device_for(t, device_map, device)
            set_module_tensor_to_device(model, t, dev, value=value, dtype=dtype if value.is_floating_point() else None)
        report.n_used += len(op.sources)
    if tied:
        lmod = model.language_model
        lmod.lm_head.weight = lmod.model.embed_tokens.weight
    on_meta = [n for n, p in list(model.named_parameters()) + list(model.named_buffers()) if p.device.type == "meta"]
    if on_meta:
        raise ModelError(f"{where}: {len(on_meta)} tensor(s) left unloaded: {_list(on_meta)}")
    report.n_params = sum(p.numel() for p in model.parameters())
    return report


@dataclass
class LoadedSa2VA:
    model: object
    tokenizer: object
    config: Sa2VAConfig
    report: LoadReport


def load_folder(folder: str | Path, *, dtype: str | torch.dtype = "fp32", device: str = "cpu",
                device_map: dict | None = None) -> LoadedSa2VA:
    """Official-layout folder -> (model, tokenizer, config, report). `device_map` overrides `device`."""
    from .processing import check_tokenizer, load_tokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
    if raw is None:
        raise ModelError(f"{folder}: no config.json (is this a Sa2VA HF folder?)")
    Sa2VAConfig.from_official(raw, str(folder / "config.json"))  # family / support check before touching weights
    source = WeightSource(weight_files(folder))
    tied = _tie_decision(raw, source)
    config = Sa2VAConfig.from_official(raw, str(folder / "config.json"), tie_word_embeddings=tied)
    tokenizer = load_tokenizer(folder)
    check_tokenizer(tokenizer, int(config.text.vocab_size), str(folder))
    model = build_empty(config)
    report = load_weights_into(model, source, config, tied=tied, dtype=parse_dtype(dtype), device=device,
                               device_map=device_map, where=str(folder))
    if device_map:
        from accelerate import dispatch_model

        report.device_map = {k: str(v) for k, v in device_map.items()}
        model = dispatch_model(model, device_map=device_map)
    model.eval()
    return LoadedSa2VA(model, tokenizer, config, report)


