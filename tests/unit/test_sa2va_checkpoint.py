"""Official-layout folders: round trip, strict key accounting, unsupported families, hashes."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sa2va_queue.core.exceptions import ModelError
from sa2va_queue.worker.backends.sa2va import checkpoint, tiny
from sa2va_queue.worker.backends.sa2va.config import reference_official_config
from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

PROMPT = "<image>Please segment the blood vessel."


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return [rng.integers(0, 255, (40, 60, 3), dtype=np.uint8), rng.integers(0, 255, (33, 47, 3), dtype=np.uint8)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for family, kw in [("qwen2", {"shards": 1}), ("internlm2", {"shards": 3}), ("internvl3-qwen2.5", {"fmt": "bin"})]:
        built = tiny.build_tiny(family, seed=3)
        folder = tiny.write_official_folder(*built, tmp_path_factory.mktemp(family.replace(".", "")), **kw)
        out[family] = (built, folder)
    return out


@pytest.mark.parametrize("family", ["qwen2", "internlm2", "internvl3-qwen2.5"])
def test_round_trip_same_outputs(folders, images, family):
    (model, tok, cfg), folder = folders[family]
    loaded = checkpoint.load_folder(folder)
    assert loaded.config.family == family
    assert loaded.report.n_used + len(loaded.report.ignored) == loaded.report.n_tensors
    assert loaded.report.ignored  # the SAM2 video-memory tensors, accounted for with a reason
    ref = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].").segment(images, [PROMPT] * 2)
    got = Sa2VAPipeline(loaded.model, loaded.tokenizer, loaded.config, force_answer="Sure, [SEG].").segment(
        images, [PROMPT] * 2
    )
    for a, b in zip(ref, got):
        np.testing.assert_array_equal(a.probabilities[0], b.probabilities[0])
    free_ref = Sa2VAPipeline(model, tok, cfg, max_new_tokens=4).segment(images, [PROMPT] * 2)
    free_got = Sa2VAPipeline(loaded.model, loaded.tokenizer, loaded.config, max_new_tokens=4).segment(
        images, [PROMPT] * 2
    )
    assert [o.tokens for o in free_ref] == [o.tokens for o in free_got]


def test_tied_embeddings_loaded_once(folders):
    _, folder = folders["internvl3-qwen2.5"]
    loaded = checkpoint.load_folder(folder)
    lm = loaded.model.language_model
    assert loaded.report.tied_embeddings
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()


def test_bf16_load(folders):
    _, folder = folders["qwen2"]
    loaded = checkpoint.load_folder(folder, dtype="bf16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}


def _copy(folder, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(folder, dst)
    return dst


def test_unexpected_tensor_is_an_error(folders, tmp_path):
    dst = _copy(folders["qwen2"][1], tmp_path)
    sd = load_file(dst / "model.safetensors")
    sd["language_model.model.layers.0.self_attn.extra_proj.weight"] = torch.zeros(2, 2)
    sd["mlp1.9.weight"] = torch.zeros(2)
    save_file(sd, str(dst / "model.safetensors"))
    with pytest.raises(ModelError, match=r"2 unexpected tensor\(s\):.*mlp1\.9\.weight"):
        checkpoint.load_folder(dst)


def test_missing_tensor_is_an_error(folders, tmp_path):
    dst = _copy(folders["qwen2"][1], tmp_path)
    sd = load_file(dst / "model.safetensors")
    del sd["grounding_encoder.sam2_model.sam_mask_decoder.conv_s0.weight"]
    del sd["text_hidden_fcs.2.bias"]
    save_file(sd, str(dst / "model.safetensors"))
    with pytest.raises(ModelError, match=r"2 missing parameter\(s\):.*mask_decoder\.conv_s0\.weight.*text_hidden_fcs"):
        checkpoint.load_folder(dst)


def test_shape_mismatch_is_an_error(folders, tmp_path):
    dst = _copy(folders["qwen2"][1], tmp_path)
    sd = load_file(dst / "model.safetensors")
    sd["text_hidden_fcs.0.weight"] = torch.zeros(80, 80)
    save_file(sd, str(dst / "model.safetensors"))
    with pytest.raises(ModelError, match=r"text_hidden_fcs\.0\.weight: \(80, 80\) -> text_hidden_fcs\.0\.weight expects \(64, 64\)"):
        checkpoint.load_folder(dst)


def test_missing_shard_and_no_weights(folders, tmp_path):
    dst = _copy(folders["internlm2"][1], tmp_path)
    (dst / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(ModelError, match="missing shard"):
        checkpoint.load_folder(dst)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(reference_official_config("Sa2VA-1B")))
    with pytest.raises(ModelError, match="no weights"):
        checkpoint.load_folder(empty)


def test_qwen_vl_folder_is_rejected_by_name(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat", "text_config": {"x": 1}})
    )
    with pytest.raises(ModelError, match="Qwen-VL based Sa2VA is not supported.*Sa2VAChatModelQwen"):
        checkpoint.load_folder(tmp_path)


def test_folder_hash_tracks_content(folders, tmp_path):
    dst = _copy(folders["qwen2"][1], tmp_path)
    h1 = checkpoint.folder_hash(dst)
    assert h1 == checkpoint.folder_hash(folders["qwen2"][1]) and len(h1) == 64
    sd = load_file(dst / "model.safetensors")
    sd["text_hidden_fcs.2.bias"] = sd["text_hidden_fcs.2.bias"] + 1
    save_file(sd, str(dst / "model.safetensors"))
    assert checkpoint.folder_hash(dst) != h1
    (dst / "manifest.json").write_text('{"a": 1}')
    assert checkpoint.folder_hash(dst) == checkpoint.manifest_hash(dst)
