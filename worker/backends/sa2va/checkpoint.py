"""Load an official-layout Sa2VA HF folder into our model, with strict key accounting.

Folder: `config.json` (official field names), tokenizer files, and weights as `model.safetensors`,
sharded `*.safetensors` with `model.safetensors.index.json`, or `pytorch_model.bin` (+ index).
Every tensor in the folder must be used (or be one of the documented ignorable SAM2 video-memory
tensors) and every parameter of the model must be loaded; otherwise a ModelError lists the
missing / unexpected keys. The model is built on the meta device and each tensor is written once,
straight to the device its module is placed on.

Speed (a 52 GB Sa2VA-26B folder, bench/gpu/load_time.py): safetensors files are read by their own
header offsets, by several threads over contiguous byte ranges, in large reads into pinned host
buffers that are copied to the GPU on one CUDA stream per thread while the next read runs (plain
buffers and memcpy on the CPU: one code path); the transforms (InternLM2 wqkv split, dtype cast)
run on the destination device; each tensor is set in its module directly (accelerate's
set_module_tensor_to_device empties the CUDA cache after every tensor). The checkpoint hash lives in
weightfiles.py (no torch there: the worker starts it before its imports).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from sa2va_queue.core.exceptions import ModelError

from . import keymap
from .config import Sa2VAConfig
from .weightfiles import folder_hash, manifest_hash, sha256_file, weight_files  # noqa: F401  (convert.py, tests)

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


# safetensors element types (the format's names) -> torch
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64,
              "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
              "BOOL": torch.bool}
for _name, _attr in (("F8_E4M3", "float8_e4m3fn"), ("F8_E5M2", "float8_e5m2")):
    if hasattr(torch, _attr):
        _ST_DTYPES[_name] = getattr(torch, _attr)

READ_CHUNK = 64 << 20  # bytes per read (and per pinned staging buffer, two per thread)
READ_THREADS = 8


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor of a safetensors file lies: absolute byte range and element type."""

    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int
    nbytes: int


def safetensors_entries(path: Path) -> dict[str, TensorEntry]:
    """The header of a safetensors file (8-byte little-endian length + JSON) as TensorEntry per key."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= min(size - 8, 1 << 28):
            raise ModelError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        try:
            meta = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable safetensors header ({exc})") from None
    base = 8 + n
    out = {}
    for key, v in meta.items():
        if key == "__metadata__":
            continue
        dtype = _ST_DTYPES.get(v.get("dtype"))
        if dtype is None:
            raise ModelError(f"{path}: tensor {key} has element type {v.get('dtype')!r}; "
                             f"supported: {', '.join(_ST_DTYPES)}")
        start, end = v["data_offsets"]
        shape = tuple(int(d) for d in v["shape"])
        numel = 1
        for d in shape:
            numel *= d
        if end - start != numel * dtype.itemsize or base + end > size:
            raise ModelError(f"{path}: tensor {key} {shape} {v['dtype']} has byte range {start}..{end} "
                             f"(file data {size - base} bytes)")
        out[key] = TensorEntry(path, dtype, shape, base + start, end - start)
    return out


def _readinto(f, view: memoryview, where: str) -> None:
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise ModelError(f"{where}: file ended early")
        got += n


def _byte_view(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


class WeightSource:
    """Key -> tensor access over a folder's weight files (safetensors by their header offsets, .bin
    mmap-loaded); `read` takes many tensors at once, in parallel, straight to their devices."""

    def __init__(self, files: list[Path]):
        self.files = files
        self._where: dict[str, Path] = {}
        self._entries: dict[str, TensorEntry] = {}
        self._bins: dict[Path, dict] = {}
        for f in files:
            if f.suffix == ".safetensors":
                entries = safetensors_entries(f)
                for k, e in entries.items():
                    self._add(k, f)
                self._entries.update(entries)
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
        return self.read({key: "cpu"}, threads=1)[key]

    def nbytes(self, key: str) -> int:
        f = self._where[key]
        if f in self._bins:
            t = self._bins[f][key]
            return t.numel() * t.element_size()
        return self._entries[key].nbytes

    def shape(self, key: str) -> tuple[int, ...]:
        f = self._where[key]
        if f in self._bins:
            return tuple(self._bins[f][key].shape)
        return self._entries[key].shape

    def read(self, wanted: dict[str, torch.device | str], threads: int = READ_THREADS,
             chunk: int = READ_CHUNK) -> dict[str, torch.Tensor]:
        """{key: device} -> {key: tensor on that device, in the file's dtype}. Safetensors ranges are
        split into `threads` contiguous parts of about equal bytes, each read in order by one thread."""
        out: dict[str, torch.Tensor] = {}
        items = []
        for key, dev in wanted.items():
            f = self._where[key]
            if f in self._bins:
                out[key] = self._bins[f][key].to(dev)
            else:
                items.append((key, self._entries[key], torch.device(dev)))
        if not items:
            return out
        items.sort(key=lambda it: (str(it[1].path), it[1].start))
        total = sum(e.nbytes for _, e, _ in items)
        chunk = max(1, min(chunk, max(e.nbytes for _, e, _ in items)))
        threads = max(1, min(threads, len(items)))
        parts: list[list] = [[]]
        acc = 0
        for it in items:
            if acc >= total * len(parts) / threads and len(parts) < threads:
                parts.append([])
            parts[-1].append(it)
            acc += it[1].nbytes
        if len(parts) == 1:
            out.update(_read_part(parts[0], chunk))
            return out
        with ThreadPoolExecutor(len(parts), thread_name_prefix="sa2va-load") as pool:
            for got in pool.map(lambda part: _read_part(part, chunk), parts):
                out.update(got)
        return out


def _read_part(items: list, chunk: int) -> dict[str, torch.Tensor]:
    """One thread's share of WeightSource.read: tensors sorted by (file, offset)."""
    out: dict[str, torch.Tensor] = {}
    files: dict[Path, object] = {}
    stagings: dict[torch.device, _Staging] = {}  # per device: buffers (and on a GPU a copy stream)
    try:
        i = 0
        while i < len(items):
            key, e, dev = items[i]
            f = files.get(e.path)
            if f is None:
                f = files[e.path] = open(e.path, "rb", buffering=0)
                if hasattr(os, "posix_fadvise"):
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            staging = stagings.get(dev)
            if staging is None:
                staging = stagings[dev] = _Staging(dev, chunk)
            # consecutive tensors of one file on one device that fit one buffer: one read
            j = i + 1
            while (j < len(items) and items[j][1].path == e.path and items[j][2] == dev
                   and items[j][1].start + items[j][1].nbytes - e.start <= chunk):
                j += 1
            group = items[i:j]
            dests = [(k, torch.empty(x.shape, dtype=x.dtype, device=d)) for k, x, d in group]
            if e.nbytes > chunk:  # one large tensor, in pieces
                dst = _byte_view(dests[0][1])
                for off in range(0, e.nbytes, chunk):
                    n = min(chunk, e.nbytes - off)
                    buf = staging.next_buffer()
                    f.seek(e.start + off)
                    _readinto(f, memoryview(buf[:n].numpy()), str(e.path))
                    staging.copy(dst[off:off + n], buf[:n])
            else:
                span = group[-1][1].start + group[-1][1].nbytes - e.start
                buf = staging.next_buffer()
                f.seek(e.start)
                _readinto(f, memoryview(buf[:span].numpy()), str(e.path))
                for (k, x, d), (_, t) in zip(group, dests):
                    if x.nbytes:
                        a = x.start - e.start
                        staging.copy(_byte_view(t), buf[a:a + x.nbytes])
            out.update(dests)
            i = j
        for staging in stagings.values():
            staging.finish()
    finally:
        for f in files.values():
            f.close()
    return out


class _Staging:
    """Two host buffers of `chunk` bytes a device. On a GPU they are pinned and copied out on a side
    CUDA stream, so a copy runs while the next read fills the other buffer; a buffer is refilled only
    after its copies are done. On the CPU the copies are plain memcpy (the same code path, testable
    without a GPU)."""

    def __init__(self, device: torch.device, chunk: int):
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device=device) if self.cuda else None
        self.buffers = [torch.empty(chunk, dtype=torch.uint8, pin_memory=self.cuda) for _ in range(2)]
        self.done: list = [None, None]
        self.pending = False
        self.slot = 1

    def next_buffer(self) -> torch.Tensor:
        if self.pending:  # the copies out of the current buffer: an event to wait on before reuse
            ev = torch.cuda.Event()
            ev.record(self.stream)
            self.done[self.slot] = ev
            self.pending = False
        self.slot ^= 1
        if self.done[self.slot] is not None:
            self.done[self.slot].synchronize()
            self.done[self.slot] = None
        return self.buffers[self.slot]

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        if not self.cuda:
            dst.copy_(src)
            return
        # dst is fresh memory from the default stream's pool; finish() syncs this stream before any
        # tensor is used or freed
        with torch.cuda.stream(self.stream):
            dst.copy_(src, non_blocking=True)
        self.pending = True

    def finish(self) -> None:
        if self.cuda:
            self.stream.synchronize()


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


def _set_tensor(model, name: str, value: torch.Tensor) -> None:
    """Put `value` in place of the (meta) parameter or buffer `name`; the shape was checked by check_plan."""
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    if attr in mod._parameters:
        old = mod._parameters[attr]
        mod._parameters[attr] = torch.nn.Parameter(value, requires_grad=old.requires_grad)
    elif attr in mod._buffers:
        mod._buffers[attr] = value
    else:
        raise ModelError(f"{type(mod).__name__} {mod_name!r} has no parameter or buffer {attr!r}")


WAVE_BYTES = 4 << 30  # file bytes read per wave (a 26B bf16 folder: 13 waves of 8 threads each)


def _waves(ops: list, source: "WeightSource", limit: int) -> Iterator[list]:
    """`ops` in order, cut into runs whose source tensors hold at most `limit` bytes (an op larger
    than that is a run of its own). A source used by two ops is counted in each run it appears in."""
    wave: list = []
    size = 0
    for op in ops:
        n = sum(source.nbytes(s) for s in op.sources)
        if wave and size + n > limit:
            yield wave
            wave, size = [], 0
        wave.append(op)
        size += n
    if wave:
        yield wave


def load_weights_into(model, source: WeightSource, config: Sa2VAConfig, *, tied: bool, dtype: torch.dtype,
                      device="cpu", device_map=None, where: str = "checkpoint",
                      threads: int = READ_THREADS) -> LoadReport:
    plan = keymap.plan_official_to_ours(source.keys(), config.llm_arch)
    lm = keymap.lm_shape(config.text)
    expected = expected_state(model, tied)
    check_plan(plan, expected, source.shape, lm, where)
    report = LoadReport(folder=where, n_tensors=len(source.keys()), ignored=dict(plan.ignored), tied_embeddings=tied)
    # every source tensor read once, in parallel, onto the device of (the first of) its targets; in
    # waves of at most WAVE_BYTES of file data, so a checkpoint stored wider than the model (fp32
    # for a bf16 model) never sits whole on a GPU beside its cast copy
    for wave in _waves(plan.ops, source, WAVE_BYTES):
        wanted: dict[str, torch.device | str] = {}
        uses: dict[str, int] = {}
        for op in wave:
            for s in op.sources:
                wanted.setdefault(s, _device_for(op.targets[0], device_map, device))
                uses[s] = uses.get(s, 0) + 1
        raw = source.read(wanted, threads=threads)
        for op in wave:
            outs = op.apply([raw[s] for s in op.sources], lm)
            for s in op.sources:  # dropped after its last use: transforms keep one op's copies at a time
                uses[s] -= 1
                if not uses[s]:
                    del raw[s]
            for t, value in zip(op.targets, outs):
                value = value.to(_device_for(t, device_map, device))
                if value.is_floating_point() and value.dtype != dtype:
                    value = value.to(dtype)  # on the destination device: no detour through the host
                _set_tensor(model, t, value)
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


