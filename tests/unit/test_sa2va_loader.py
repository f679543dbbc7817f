"""The parallel safetensors reader behind load_folder: byte-exact against safetensors, every path of
the read loop (grouped small tensors, large tensors in pieces, several threads and files), header
checks, and the parallel folder hash against its sequential definition."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from sa2va_queue.core.exceptions import ModelError
from sa2va_queue.worker.backends.sa2va import checkpoint, tiny, weightfiles


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three files of mixed dtypes and sizes, including empty and 0-d tensors."""
    d = tmp_path_factory.mktemp("st")
    g = torch.Generator().manual_seed(0)
    files = []
    for s in range(3):
        sd = {
            f"s{s}.big": torch.randn(300, 41, generator=g),  # 49200 bytes: pieces with small chunks
            f"s{s}.bf16": torch.randn(7, 13, generator=g).to(torch.bfloat16),
            f"s{s}.half": torch.randn(5, generator=g).to(torch.float16),
            f"s{s}.ids": torch.arange(11, dtype=torch.int64) * (s + 1),
            f"s{s}.mask": torch.rand(9, generator=g) > 0.5,
            f"s{s}.empty": torch.zeros(0, 4),
            f"s{s}.scalar": torch.tensor(3.5 + s),
        }
        path = d / f"model-{s}.safetensors"
        save_file(sd, str(path))
        files.append(path)
    return files


@pytest.mark.parametrize("threads,chunk", [(1, 1 << 20), (3, 1 << 20), (2, 4096), (8, 64), (4, 1)])
def test_read_equals_safetensors(shards, threads, chunk):
    ref = {}
    for f in shards:
        ref.update(load_file(str(f)))
    src = checkpoint.WeightSource(shards)
    assert sorted(src.keys()) == sorted(ref)
    got = src.read({k: "cpu" for k in ref}, threads=threads, chunk=chunk)
    assert sorted(got) == sorted(ref)
    for k, v in ref.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v), k
        assert src.shape(k) == tuple(v.shape)
    assert torch.equal(src.get("s1.big"), ref["s1.big"])


def test_read_subset(shards):
    src = checkpoint.WeightSource(shards)
    got = src.read({"s2.bf16": "cpu", "s0.big": "cpu"}, threads=4, chunk=1000)
    assert set(got) == {"s2.bf16", "s0.big"}
    assert torch.equal(got["s0.big"], load_file(str(shards[0]))["s0.big"])


def test_bad_headers(tmp_path):
    (tmp_path / "short.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(ModelError, match="not a safetensors file"):
        checkpoint.safetensors_entries(tmp_path / "short.safetensors")
    f = tmp_path / "trunc.safetensors"
    save_file({"a": torch.zeros(100)}, str(f))
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(ModelError, match="byte range"):
        checkpoint.safetensors_entries(f)
    header = json.dumps({"a": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 1]}}).encode()
    (tmp_path / "dt.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + b"\0")
    with pytest.raises(ModelError, match="element type 'Q4'"):
        checkpoint.safetensors_entries(tmp_path / "dt.safetensors")


@pytest.mark.parametrize("wave_bytes", [checkpoint.WAVE_BYTES, 4096, 1])
def test_load_folder_dtype_and_threads(tmp_path, monkeypatch, wave_bytes):
    # small waves: the weights come in many reads (an op per wave at 1 byte), with the same result
    monkeypatch.setattr(checkpoint, "WAVE_BYTES", wave_bytes)
    model, tok, cfg = tiny.build_tiny("internlm2", seed=5)
    folder = tiny.write_official_folder(model, tok, cfg, tmp_path / "m", shards=4)
    ref = model.state_dict()
    for dtype in ("fp32", "bf16"):
        loaded = checkpoint.load_folder(folder, dtype=dtype)
        got = loaded.model.state_dict()
        want = torch.float32 if dtype == "fp32" else torch.bfloat16
        for k, v in ref.items():
            if v.is_floating_point():
                assert got[k].dtype == want, k
                assert torch.equal(got[k], v.to(want)), k
            else:
                assert torch.equal(got[k], v), k
        assert all(not p.requires_grad or p.is_leaf for p in loaded.model.parameters())


def test_folder_hash_is_the_sequential_definition(tmp_path):
    model, tok, cfg = tiny.build_tiny("qwen2", seed=2)
    folder = tiny.write_official_folder(model, tok, cfg, tmp_path / "m", shards=3)
    h = hashlib.sha256()
    for f in checkpoint.weight_files(folder):
        h.update(f"{f.name}\0{f.stat().st_size}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    assert checkpoint.folder_hash(folder) == h.hexdigest()
    assert weightfiles.start_folder_hash(folder).result(timeout=60) == h.hexdigest()


def test_background_hash_reports_a_file_that_vanished(tmp_path):
    """The worker starts the hash before the load; a weight file gone by then is an error in the
    thread that asks for the version, not a silent wrong hash."""
    model, tok, cfg = tiny.build_tiny("qwen2", seed=2)
    folder = tiny.write_official_folder(model, tok, cfg, tmp_path / "m", shards=2)
    files = checkpoint.weight_files(folder)
    files[1].unlink()
    with pytest.raises(FileNotFoundError):
        weightfiles._hash_digests(files)
    with pytest.raises(ModelError):
        weightfiles.start_folder_hash(folder).result(timeout=60)  # the index names the missing shard


def test_worker_version_hash_is_the_folder_hash(tmp_path):
    from sa2va_queue.core.modelspec import ModelSpec
    from sa2va_queue.worker.backends import build_model

    model, tok, cfg = tiny.build_tiny("qwen2", seed=3)
    folder = tiny.write_official_folder(model, tok, cfg, tmp_path / "m", shards=2)
    backend = build_model(ModelSpec.parse(f"sa2va:{folder}?force_answer=Sure%2C%20%5BSEG%5D."))
    backend.setup("cpu")
    assert backend._hash_job is not None  # started beside the load
    assert backend.version.checkpoint_hash == checkpoint.folder_hash(folder)


def test_started_hash_is_shared_until_the_files_change(tmp_path):
    """The worker command starts the hash and setup() picks the same Future up; a folder whose
    files changed since (size or modification time) is hashed again, never given the old value."""
    model, tok, cfg = tiny.build_tiny("qwen2", seed=4)
    folder = tiny.write_official_folder(model, tok, cfg, tmp_path / "m", shards=1)
    first = weightfiles.start_folder_hash(folder)
    assert weightfiles.start_folder_hash(str(folder) + "/") is first
    old = first.result(timeout=60)
    (f,) = checkpoint.weight_files(folder)
    f.write_bytes(f.read_bytes() + b" ")  # safetensors tolerates trailing bytes; the hash must not
    again = weightfiles.start_folder_hash(folder)
    assert again is not first and again.result(timeout=60) == checkpoint.folder_hash(folder) != old


def test_weight_files_module_imports_no_torch():
    """What lets the worker command read the checkpoint before it imports torch."""
    import subprocess
    import sys

    code = ("import sys; import sa2va_queue.worker.backends.sa2va.weightfiles; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
