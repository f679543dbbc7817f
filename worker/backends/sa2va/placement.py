"""Multi-GPU placement: a balanced accelerate device map computed on the meta device.

No-split units: each InternViT layer, each decoder layer (Qwen2 / Llama-for-InternLM2) and the whole
SAM2 grounding encoder (its image features feed its own mask decoder). `text_hidden_fcs` goes to the
device of the language model's final norm (where the [SEG] hidden states come out); the projector
goes with the vision tower. Everything is computed from config.json alone, so it runs on a CPU with
made-up GPU ids (`sa2va-queue inspect`).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch

from sa2va_queue.core.exceptions import ConfigError, ModelError

from .config import Sa2VAConfig
from .modeling import NO_SPLIT_MODULES

_UNITS = {"KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "TB": 10**12, "B": 1}


def parse_gpus(spec: str | list[int] | None) -> list[int]:
    if spec is None or spec == "":
        return []
    if isinstance(spec, list):
        return [int(x) for x in spec]
    try:
        gpus = [int(x) for x in str(spec).replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ConfigError(f"gpus={spec!r}: give GPU ids like 0,1,2,3") from None
    if len(set(gpus)) != len(gpus) or any(g < 0 for g in gpus):
        raise ConfigError(f"gpus={spec!r}: ids must be distinct and >= 0")
    return gpus


def parse_bytes(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", str(text))
    if not m:
        raise ConfigError(f"max_memory={text!r}: give a size like 20GiB or 18000MB")
    return int(float(m.group(1)) * _UNITS[m.group(2) or "B"])


def human(n: int) -> str:
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.2f} {unit}"
    return f"{n} B"


@dataclass
class Placement:
    device_map: "OrderedDict[str, int]"
    bytes_per_device: dict[int, int]
    total_bytes: int
    budget: dict[int, int]

    def rows(self) -> list[tuple[str, str]]:
        """Module -> device, consecutive layers on one device collapsed into ranges."""
        out: list[tuple[str, str]] = []
        run: tuple[str, int, int, int] | None = None  # (prefix, first, last, device)
        for name, dev in self.device_map.items():
            m = re.fullmatch(r"(.*\.)(\d+)", name)
            if m and run and run[0] == m.group(1) and run[3] == dev and int(m.group(2)) == run[2] + 1:
                run = (run[0], run[1], int(m.group(2)), dev)
                continue
            if run:
                out.append(_fmt(run))
                run = None
            if m:
                run = (m.group(1), int(m.group(2)), int(m.group(2)), dev)
            else:
                out.append((name, f"cuda:{dev}"))
        if run:
            out.append(_fmt(run))
        return out


def _fmt(run) -> tuple[str, str]:
    prefix, a, b, dev = run
    return (f"{prefix}{a}" if a == b else f"{prefix}{a}-{b}", f"cuda:{dev}")


def _owner(name: str, device_map: dict) -> int | None:
    best, blen = None, -1
    for k, v in device_map.items():
        if (name == k or name.startswith(k + ".") or k == "") and len(k) > blen:
            best, blen = v, len(k)
    return best


def compute_placement(
    config: Sa2VAConfig, gpus: list[int], max_memory: str | int | dict[int, int] | None, dtype: torch.dtype
) -> Placement:
    import logging

    acc_log = logging.getLogger("accelerate.utils.modeling")  # "Device N is not available" for planned GPUs
    level = acc_log.level
    acc_log.setLevel(logging.ERROR)
    try:
        return _compute_placement(config, gpus, max_memory, dtype)
    finally:
        acc_log.setLevel(level)


def _compute_placement(config, gpus, max_memory, dtype) -> Placement:
    from accelerate.utils import compute_module_sizes, get_balanced_memory, infer_auto_device_map

    from .checkpoint import build_empty

    if not gpus:
        raise ConfigError("placement needs at least one GPU id (gpus=0,1,...)")
    if max_memory is None:
        if not torch.cuda.is_available():
            raise ConfigError("give max_memory (e.g. 20GiB): there is no GPU here to measure")
        budget = {g: int(torch.cuda.mem_get_info(g)[0] * 0.9) for g in gpus}
    elif isinstance(max_memory, dict):
        budget = {int(k): parse_bytes(v) for k, v in max_memory.items()}
    else:
        budget = {g: parse_bytes(max_memory) for g in gpus}
    model = build_empty(config)
    if config.tie_word_embeddings:
        model.language_model.lm_head.weight = model.language_model.model.embed_tokens.weight
    sizes = compute_module_sizes(model, dtype=dtype)
    total = int(sizes[""])
    if total > sum(budget.values()):
        raise ModelError(
            f"model needs {human(total)} in {dtype} but {len(gpus)} GPU(s) x max_memory give only "
            f"{human(sum(budget.values()))}"
        )
    if len(gpus) > 1:
        balanced = get_balanced_memory(model, max_memory=dict(budget), no_split_module_classes=NO_SPLIT_MODULES,
                                       dtype=dtype, low_zero=False)
        balanced = {k: min(int(v), budget[k]) for k, v in balanced.items() if k in budget}
    else:
        balanced = dict(budget)
    dmap = infer_auto_device_map(model, max_memory=balanced, no_split_module_classes=NO_SPLIT_MODULES, dtype=dtype)
    if any(v not in budget for v in dmap.values()):
        # the balanced budget was too tight for the no-split units: retry with the full budget
        dmap = infer_auto_device_map(model, max_memory=dict(budget), no_split_module_classes=NO_SPLIT_MODULES,
                                     dtype=dtype)
    off = {k: v for k, v in dmap.items() if v not in budget}
    if off:
        raise ModelError(f"model does not fit on GPUs {gpus} with max_memory: {sorted(off)[:5]} would go to "
                         f"{sorted({str(v) for v in off.values()})}")
    dmap = OrderedDict(dmap)
    # [SEG] hidden states come out of the final norm: keep the small text_hidden_fcs there.
    norm_dev = _owner("language_model.model.norm", dmap)
    for k in [k for k in dmap if k == "text_hidden_fcs" or k.startswith("text_hidden_fcs.")]:
        del dmap[k]
    dmap["text_hidden_fcs"] = norm_dev
    per: dict[int, int] = {g: 0 for g in gpus}
    for name, dev in dmap.items():
        per[dev] = per.get(dev, 0) + int(sizes.get(name, 0))
    return Placement(device_map=dmap, bytes_per_device=per, total_bytes=total, budget=budget)


def device_map_for_loading(placement: Placement) -> dict[str, str]:
    return {k: f"cuda:{v}" for k, v in placement.device_map.items()}
