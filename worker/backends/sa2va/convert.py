"""Training checkpoint (mmengine / xtuner `.pth`) + base HF folder -> official-layout HF folder.

Every checkpoint tensor is accounted for:
    lora      `X.lora_A[.default].weight` / `X.lora_B[...]` pairs, merged W += (alpha / r) * B @ A
    override  a tensor that replaces the base tensor of the same name (modules_to_save copies of
              embed_tokens / lm_head, mlp1, the SAM2 mask decoder, text_hidden_fcs, any full dump)
    ignored   with a reason (PEFT's frozen `original_module` / `base_layer` copies, checked against the base)
    unknown   -> ModelError (no silent `strict=False`)
Shape mismatches are errors naming the tensor and both shapes. A per-module table says how many
tensors differ from the base; a conversion that changes nothing is an error unless allow_unchanged.
The output folder gets safetensors shards, the base's config and tokenizer files, and
`manifest.json` with the sha256 of every input and output file (its own sha256 is the model version).
"""

from __future__ import annotations

import ast
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sa2va_queue.core.exceptions import ConfigError, ModelError

from . import keymap
from .checkpoint import WeightSource, check_plan, expected_state, manifest_hash, sha256_file, weight_files
from .config import Sa2VAConfig

MODULES = ("vision_model", "mlp1", "language_model", "text_hidden_fcs", "grounding_encoder")
LORA_RE = re.compile(r"(?P<base>.+)\.lora_(?P<ab>A|B)(?:\.(?P<adapter>[\w-]+))?\.weight\Z")
MTS_RE = re.compile(r"(?P<base>.+)\.modules_to_save(?:\.(?P<adapter>[\w-]+))?\.(?P<leaf>weight|bias)\Z")
ORIG_RE = re.compile(r"(?P<base>.+)\.original_module\.(?P<leaf>weight|bias)\Z")
BASE_LAYER_RE = re.compile(r"(?P<base>.+)\.base_layer\.(?P<leaf>weight|bias)\Z")
SHARD_BYTES = 4 << 30


# ----------------------------------------------------------------------------------------------
# Reading the training checkpoint


def load_training_state(path: str | Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A `.pth` file (mmengine: {'state_dict': ...} or plain) or a DeepSpeed folder -> (state dict, notes)."""
    path = Path(path)
    notes: list[str] = []
    if path.is_dir():
        found = sorted(path.rglob("mp_rank_00_model_states.pt"))
        if not found:
            raise ModelError(f"{path}: a folder but no DeepSpeed mp_rank_00_model_states.pt inside")
        notes.append(f"DeepSpeed model states: {found[0].relative_to(path)}")
        obj = _torch_load(found[0], notes)
    elif path.is_file():
        obj = _torch_load(path, notes)
    else:
        raise ModelError(f"checkpoint {path} does not exist")
    sd: Any = obj
    for key in ("state_dict", "module", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            notes.append(f"tensors under '{key}'")
            break
    if not isinstance(sd, dict) or not sd:
        raise ModelError(f"{path}: no state dict found (top-level keys: {list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__})")
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise ModelError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if v.numel() == 0:
            raise ModelError(f"{path}: tensor {k} is empty (a ZeRO-3 partitioned checkpoint? run zero_to_fp32.py first)")
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out, notes


def _torch_load(path: Path, notes: list[str]):
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # mmengine checkpoints carry message-hub objects the safe loader refuses
        notes.append(f"{path.name}: loaded with weights_only=False ({type(exc).__name__}): trusted local file")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except ModuleNotFoundError as exc:  # mmengine is the optional `convert` extra (see pyproject.toml)
        raise ConfigError(f"{path}: the checkpoint's pickle needs the {exc.name!r} package; "
                          "install it with: pip install 'sa2va-queue[convert]'") from None


def training_to_official(key: str) -> str:
    """Official HF renames: `mllm.model.` -> ``, `mllm.` -> ``, `.gamma` -> `.g_weight`; PEFT wrappers removed."""
    for a, b in (("mllm.model.", ""), ("mllm.", ""), (".gamma", ".g_weight")):
        key = key.replace(a, b)
    key = key.replace("language_model.base_model.model.", "language_model.")
    key = key.replace("vision_model.base_model.model.", "vision_model.")
    return key


# ----------------------------------------------------------------------------------------------
# LoRA hyper-parameters


@dataclass
class LoraSetting:
    r: int
    alpha: float
    rslora: bool = False
    source: str = ""

    @property
    def scaling(self) -> float:
        return self.alpha / (self.r**0.5) if self.rslora else self.alpha / self.r


def lora_from_config(path: str | Path) -> dict[str, LoraSetting]:
    """{'llm': ..., 'visual': ...} from an mmengine/xtuner config (mmengine.Config, else a plain AST read)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"training config {path} does not exist")
    found: dict[str, LoraSetting] = {}
    try:
        from mmengine import Config

        cfg = Config.fromfile(str(path), lazy_import=False)
        _walk(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg), "", found, str(path))
    except Exception:
        found.clear()
        _walk_ast(path, found)
    return found


def _walk(obj, where: str, found: dict, src: str) -> None:
    if isinstance(obj, dict):
        if "r" in obj and "lora_alpha" in obj:
            kind = "visual" if "visual" in where or "vision" in where else "llm"
            found[kind] = LoraSetting(int(obj["r"]), float(obj["lora_alpha"]), bool(obj.get("use_rslora", False)),
                                      f"{src}:{where}")
        for k, v in obj.items():
            _walk(v, f"{where}.{k}" if where else str(k), found, src)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _walk(v, f"{where}[{i}]", found, src)


def _walk_ast(path: Path, found: dict) -> None:
    tree = ast.parse(path.read_text(), str(path))
    parents: dict[int, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg:
                    parents[id(kw.value)] = kw.arg
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            parents[id(node.value)] = node.targets[0].id
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            kws = {kw.arg: kw.value for kw in node.keywords if kw.arg}
            if "r" in kws and "lora_alpha" in kws:
                try:
                    r, alpha = ast.literal_eval(kws["r"]), ast.literal_eval(kws["lora_alpha"])
                    rs = ast.literal_eval(kws["use_rslora"]) if "use_rslora" in kws else False
                except ValueError:
                    continue
                name = parents.get(id(node), "")
                kind = "visual" if "visual" in name or "vision" in name else "llm"
                found[kind] = LoraSetting(int(r), float(alpha), bool(rs), f"{path}:{name or 'lora'}")


# ----------------------------------------------------------------------------------------------
# Conversion


@dataclass
class ConvertReport:
    out_dir: str
    lora_pairs: int = 0
    overrides: int = 0
    ignored: dict[str, str] = field(default_factory=dict)
    per_module: dict[str, dict[str, int]] = field(default_factory=dict)  # module -> {checkpoint, changed, total}
    lora: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    version: str = ""


def _module_of(key: str) -> str:
    for m in MODULES:
        if key == m or key.startswith(m + "."):
            return m
    return key.split(".")[0]


def _lora_for(key: str, settings: dict[str, LoraSetting]) -> LoraSetting:
    kind = "visual" if key.startswith("vision_model.") else "llm"
    if kind in settings:
        return settings[kind]
    if "any" in settings:
        return settings["any"]
    raise ConfigError(
        f"LoRA tensors for {key} but no r/alpha for the {'vision' if kind == 'visual' else 'language'} model: "
        "give --config TRAIN_CONFIG.py or --lora-r/--lora-alpha"
    )


def convert(
    base: str | Path,
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    config: str | Path | None = None,
    lora_r: int | None = None,
    lora_alpha: float | None = None,
    allow_unchanged: bool = False,
    shard_bytes: int = SHARD_BYTES,
) -> ConvertReport:
    base, checkpoint, out = Path(base), Path(checkpoint), Path(out_dir)
    cfg = Sa2VAConfig.from_folder(base)
    base_src = WeightSource(weight_files(base))
    base_keys = set(base_src.keys())
    train, notes = load_training_state(checkpoint)
    report = ConvertReport(out_dir=str(out), notes=notes)

    settings: dict[str, LoraSetting] = lora_from_config(config) if config else {}
    if (lora_r is None) != (lora_alpha is None):
        raise ConfigError("give both --lora-r and --lora-alpha (or neither)")
    if lora_r is not None:
        flag = LoraSetting(int(lora_r), float(lora_alpha), False, "flags")
        for kind, s in settings.items():
            if (s.r, s.alpha) != (flag.r, flag.alpha):
                raise ConfigError(f"--lora-r/--lora-alpha ({flag.r}/{flag.alpha}) disagree with {s.source} "
                                  f"(r={s.r}, lora_alpha={s.alpha})")
        settings = {"any": flag, **settings}

    # ---- classify every checkpoint tensor
    lora_a: dict[str, torch.Tensor] = {}
    lora_b: dict[str, torch.Tensor] = {}
    overrides: dict[str, torch.Tensor] = {}
    frozen_copies: dict[str, tuple[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for raw_key, value in train.items():
        key = training_to_official(raw_key)
        if m := LORA_RE.match(key):
            (lora_a if m.group("ab") == "A" else lora_b)[m.group("base") + ".weight"] = value
        elif "lora_" in key:
            unknown.append(f"{raw_key} (unsupported LoRA tensor kind)")
        elif m := MTS_RE.match(key):
            overrides[f"{m.group('base')}.{m.group('leaf')}"] = value
        elif m := ORIG_RE.match(key):
            frozen_copies[raw_key] = (f"{m.group('base')}.{m.group('leaf')}", value)
        elif m := BASE_LAYER_RE.match(key):
            frozen_copies[raw_key] = (f"{m.group('base')}.{m.group('leaf')}", value)
        elif key in base_keys:
            overrides[key] = value
        else:
            unknown.append(raw_key)
    for target in set(lora_a) ^ set(lora_b):
        unknown.append(f"{target} (lora_A without lora_B or the reverse)")
    if unknown:
        raise ModelError(f"{checkpoint}: {len(unknown)} tensor(s) with no place in the base model: "
                         + ", ".join(sorted(unknown)[:20]) + (" ..." if len(unknown) > 20 else ""))

    # ---- shapes
    problems = []
    for key, value in overrides.items():
        if key not in base_keys:
            problems.append(f"{key}: not in the base model")
        elif tuple(value.shape) != base_src.shape(key):
            problems.append(f"{key}: checkpoint {tuple(value.shape)} vs base {base_src.shape(key)}")
    for key in lora_a:
        if key not in base_keys:
            problems.append(f"{key}: LoRA target not in the base model")
            continue
        a, b, w = lora_a[key], lora_b[key], base_src.shape(key)
        if a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != tuple(w):
            problems.append(f"{key}: LoRA B{tuple(b.shape)} @ A{tuple(a.shape)} does not fit base {tuple(w)}")
    if problems:
        raise ModelError(f"{checkpoint}: shape mismatch: " + "; ".join(sorted(problems)[:20]))

    # ---- frozen copies must equal the base (else the checkpoint was trained on another base)
    for raw_key, (key, value) in frozen_copies.items():
        if key not in base_keys:
            raise ModelError(f"{checkpoint}: frozen copy {raw_key} has no base tensor {key}")
        if not torch.equal(value.to(torch.float32), base_src.get(key).to(torch.float32)):
            raise ModelError(f"{checkpoint}: frozen copy {raw_key} differs from the base's {key}: trained on another "
                             "base model?")
        report.ignored[raw_key] = "PEFT frozen copy of a base tensor (equal to the base)"

    # ---- new tensors
    new: dict[str, torch.Tensor] = {}
    for key, value in overrides.items():
        new[key] = value.to(base_src.get(key).dtype)
    report.overrides = len(overrides)
    for key in sorted(lora_a):
        s = _lora_for(key, settings)
        a, b = lora_a[key].float(), lora_b[key].float()
        if a.shape[0] != s.r:
            raise ModelError(f"{key}: LoRA rank {a.shape[0]} in the checkpoint but r={s.r} from {s.source}")
        w = new.get(key, base_src.get(key))
        new[key] = (w.float() + s.scaling * (b @ a)).to(w.dtype)
        report.lora_pairs += 1
        report.lora.setdefault(_module_of(key), {"r": s.r, "alpha": s.alpha, "scaling": s.scaling, "source": s.source})

    # ---- per-module differences
    per: dict[str, dict[str, int]] = {m: {"checkpoint": 0, "changed": 0, "total": 0} for m in MODULES}
    for key in base_keys:
        per.setdefault(_module_of(key), {"checkpoint": 0, "changed": 0, "total": 0})["total"] += 1
    for key, value in new.items():
        mod = per[_module_of(key)]
        mod["checkpoint"] += 1
        if not torch.equal(value, base_src.get(key)):
            mod["changed"] += 1
    report.per_module = per
    if not any(v["changed"] for v in per.values()) and not allow_unchanged:
        raise ModelError(f"{checkpoint}: the conversion changed no tensor of {base} (pass allow_unchanged to accept)")

    # ---- write
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output folder {out} exists and is not empty")
    out.mkdir(parents=True, exist_ok=True)
    _write_shards(base_src, new, out, shard_bytes)
    for f in sorted(base.iterdir()):
        if f.is_file() and f.name not in ("manifest.json",) and not f.name.endswith(".index.json") and \
                f.suffix not in (".safetensors", ".bin", ".pt", ".pth"):
            shutil.copy2(f, out / f.name)

    # ---- verify: output accounts strictly against our model layout, and new tensors really landed there
    out_src = WeightSource(weight_files(out))
    plan = keymap.plan_official_to_ours(out_src.keys(), cfg.llm_arch)
    from .checkpoint import _tie_decision, build_empty

    raw = json.loads((out / "config.json").read_text())
    tied = _tie_decision(raw, out_src)
    ocfg = Sa2VAConfig.from_official(raw, str(out / "config.json"), tie_word_embeddings=tied)
    check_plan(plan, expected_state(build_empty(ocfg), tied), out_src.shape, keymap.lm_shape(ocfg.text), str(out))
    for key, value in new.items():
        if not torch.equal(out_src.get(key), value):
            raise ModelError(f"{out}: {key} in the output differs from the converted tensor")

    files_in = {f"base/{f.name}": sha256_file(f) for f in sorted(base.iterdir()) if f.is_file()}
    ck_files = sorted(p for p in checkpoint.rglob("*") if p.is_file()) if checkpoint.is_dir() else [checkpoint]
    files_in.update({f"checkpoint/{p.relative_to(checkpoint) if checkpoint.is_dir() else p.name}": sha256_file(p)
                     for p in ck_files})
    if config:
        files_in[f"config/{Path(config).name}"] = sha256_file(Path(config))
    manifest = {
        "format": "sa2va-queue convert v1",
        "inputs": files_in,
        "outputs": {f.name: sha256_file(f) for f in sorted(out.iterdir()) if f.is_file()},
        "lora": report.lora,
        "accounting": {
            "checkpoint_tensors": len(train),
            "lora_pairs": report.lora_pairs,
            "overrides": report.overrides,
            "ignored": report.ignored,
        },
        "per_module": report.per_module,
        "notes": notes,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    report.version = manifest_hash(out)
    return report


def _write_shards(base_src: WeightSource, new: dict[str, torch.Tensor], out: Path, shard_bytes: int) -> list[str]:
    from safetensors.torch import save_file

    keys = sorted(base_src.keys())
    shards: list[list[str]] = [[]]
    size = 0
    for k in keys:
        n = int(torch.Size(base_src.shape(k)).numel()) * 2
        if shards[-1] and size + n > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(k)
        size += n
    names = []
    weight_map = {}
    total = 0
    for i, part in enumerate(shards):
        name = "model.safetensors" if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (new[k] if k in new else base_src.get(k)).contiguous() for k in part}
        total += sum(t.numel() * t.element_size() for t in tensors.values())
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
        names.append(name)
    if len(shards) > 1:
        (out / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True))
    return names
