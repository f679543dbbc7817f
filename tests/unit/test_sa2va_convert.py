"""Training checkpoint + base folder -> converted folder: LoRA merge, accounting, manifests, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from sa2va_queue.cli import cli_model
from sa2va_queue.core.exceptions import ConfigError, ModelError
from sa2va_queue.worker.backends.sa2va import checkpoint, convert, tiny
from sa2va_queue.worker.backends.sa2va.pipeline import Sa2VAPipeline

R, ALPHA = 4, 8
PEFT = "mllm.model.language_model.base_model.model."
TRAIN_CONFIG = """
llm_lora = dict(type='LoraConfig', r=4, lora_alpha=8, lora_dropout=0.05, bias='none', task_type='CAUSAL_LM')
model = dict(type='Sa2VAModel', mllm=dict(type='InternVLMLLM', llm_lora=llm_lora))
"""
XTUNER_CONFIG = """
from xtuner.not_installed import Something
from peft import LoraConfig
model = dict(type=Something, mllm=dict(llm_lora=dict(type=LoraConfig, r=4, lora_alpha=8, lora_dropout=0.05)))
"""


def _base(tmp_path_factory, family):
    built = tiny.build_tiny(family, seed=5)
    folder = tiny.write_official_folder(*built, tmp_path_factory.mktemp("base"))
    return built, folder, load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def qwen_base(tmp_path_factory):
    return _base(tmp_path_factory, "qwen2")


@pytest.fixture(scope="module")
def internlm_base(tmp_path_factory):
    return _base(tmp_path_factory, "internlm2")


def fake_training_state(base_sd: dict, family: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """What an xtuner Sa2VA run saves: LoRA pairs, modules_to_save copies, mlp1, mask decoder, text_hidden_fcs."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    if family == "internlm2":
        targets = ["attention.wqkv", "attention.wo", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]
        emb, head = "model.tok_embeddings", "output"
    else:
        targets = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                   "mlp.up_proj", "mlp.down_proj"]
        emb, head = "model.embed_tokens", "lm_head"
    for layer in range(2):
        for t in targets:
            out_f, in_f = base_sd[f"language_model.model.layers.{layer}.{t}.weight"].shape
            pre = f"{PEFT}model.layers.{layer}.{t}"
            sd[f"{pre}.lora_A.default.weight"] = torch.randn(R, in_f, generator=g) * 0.1
            sd[f"{pre}.lora_B.default.weight"] = torch.randn(out_f, R, generator=g) * 0.1
    for name in (emb, head):
        w = base_sd[f"language_model.{name}.weight"]
        sd[f"{PEFT}{name}.modules_to_save.default.weight"] = w + 0.01 * torch.randn(w.shape, generator=g)
        sd[f"{PEFT}{name}.original_module.weight"] = w.clone()
    for k, v in base_sd.items():
        if k.startswith(("mlp1.", "text_hidden_fcs.", "grounding_encoder.sam2_model.sam_mask_decoder.")):
            key = "mllm.model." + k if k.startswith("mlp1.") else k
            sd[key] = v + 0.05 * torch.randn(v.shape, generator=g)
    return sd


def _save(tmp_path, sd, name="iter_3672.pth"):
    path = tmp_path / name
    torch.save({"meta": {"iter": 3672}, "state_dict": sd}, path)
    return path


def test_convert_merges_lora_and_overrides(qwen_base, tmp_path):
    (model, tok, cfg), base, base_sd = qwen_base
    train = fake_training_state(base_sd, "qwen2")
    (tmp_path / "train.py").write_text(TRAIN_CONFIG)
    rep = convert.convert(base, _save(tmp_path, train), tmp_path / "out", config=tmp_path / "train.py")
    out = load_file(tmp_path / "out" / "model.safetensors")
    assert set(out) == set(base_sd)
    # W' = W + (alpha / r) B @ A, exactly as computed in float32
    for key in ("language_model.model.layers.0.self_attn.q_proj.weight", "language_model.model.layers.1.mlp.down_proj.weight"):
        pre = PEFT + key[len("language_model."):-len(".weight")]
        a, b = train[f"{pre}.lora_A.default.weight"], train[f"{pre}.lora_B.default.weight"]
        torch.testing.assert_close(out[key], base_sd[key] + (ALPHA / R) * b @ a, rtol=1e-6, atol=1e-6)
    assert torch.equal(out["language_model.lm_head.weight"], train[f"{PEFT}lm_head.modules_to_save.default.weight"])
    assert torch.equal(out["mlp1.1.weight"], train["mllm.model.mlp1.1.weight"])
    assert torch.equal(out["text_hidden_fcs.0.weight"], train["text_hidden_fcs.0.weight"])
    for k in base_sd:  # untouched tensors are bit-identical
        if k.startswith(("vision_model.", "grounding_encoder.sam2_model.image_encoder", "language_model.model.norm")):
            assert torch.equal(out[k], base_sd[k]), k
    n_dec = sum(k.startswith("grounding_encoder.sam2_model.sam_mask_decoder.") for k in base_sd)
    assert rep.per_module["grounding_encoder"]["changed"] == n_dec
    assert rep.per_module["text_hidden_fcs"]["changed"] == 4
    assert rep.per_module["mlp1"]["changed"] == 6  # LayerNorm + two Linear, weight and bias
    assert rep.per_module["vision_model"]["changed"] == 0
    assert rep.per_module["language_model"]["changed"] == 2 * 7 + 2
    assert rep.lora_pairs == 14 and rep.lora["language_model"]["scaling"] == 2.0
    assert len(rep.ignored) == 2  # the two original_module copies, checked equal to the base
    # manifest: every input and output file hashed; version = sha256(manifest)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert "checkpoint/iter_3672.pth" in manifest["inputs"] and "base/model.safetensors" in manifest["inputs"]
    assert "model.safetensors" in manifest["outputs"] and "tokenizer.json" in manifest["outputs"]
    assert rep.version == checkpoint.manifest_hash(tmp_path / "out") == checkpoint.folder_hash(tmp_path / "out")
    # the converted folder loads strictly and answers differently from the base
    loaded = checkpoint.load_folder(tmp_path / "out")
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    p_new = Sa2VAPipeline(loaded.model, loaded.tokenizer, loaded.config, force_answer="Sure, [SEG].").segment(
        [img], ["<image>vessel"])[0].probabilities[0]
    p_old = Sa2VAPipeline(model, tok, cfg, force_answer="Sure, [SEG].").segment([img], ["<image>vessel"])[0].probabilities[0]
    assert float(np.abs(p_new - p_old).max()) > 1e-3


def test_convert_is_deterministic(qwen_base, tmp_path):
    _, base, base_sd = qwen_base
    ck = _save(tmp_path, fake_training_state(base_sd, "qwen2"))
    v1 = convert.convert(base, ck, tmp_path / "a", lora_r=R, lora_alpha=ALPHA).version
    v2 = convert.convert(base, ck, tmp_path / "b", lora_r=R, lora_alpha=ALPHA).version
    assert v1 == v2
    other = _save(tmp_path, fake_training_state(base_sd, "qwen2", seed=1), "iter_2.pth")
    assert convert.convert(base, other, tmp_path / "c", lora_r=R, lora_alpha=ALPHA).version != v1


def test_internlm2_fused_wqkv_lora_and_deepspeed_folder(internlm_base, tmp_path):
    _, base, base_sd = internlm_base
    train = fake_training_state(base_sd, "internlm2")
    ds = tmp_path / "iter_10.pth" / "checkpoint"
    ds.mkdir(parents=True)
    torch.save({"module": train}, ds / "mp_rank_00_model_states.pt")
    (tmp_path / "xtuner_cfg.py").write_text(XTUNER_CONFIG)  # imports fail -> read by AST
    rep = convert.convert(base, tmp_path / "iter_10.pth", tmp_path / "out", config=tmp_path / "xtuner_cfg.py")
    out = load_file(tmp_path / "out" / "model.safetensors")
    key = "language_model.model.layers.1.attention.wqkv.weight"
    pre = f"{PEFT}model.layers.1.attention.wqkv"
    expect = base_sd[key] + 2.0 * train[f"{pre}.lora_B.default.weight"] @ train[f"{pre}.lora_A.default.weight"]
    torch.testing.assert_close(out[key], expect, rtol=1e-6, atol=1e-6)
    assert torch.equal(out["language_model.output.weight"], train[f"{PEFT}output.modules_to_save.default.weight"])
    assert any("DeepSpeed" in n for n in rep.notes)
    checkpoint.load_folder(tmp_path / "out")  # strict load of the result


def test_shape_mismatch_names_tensor_and_shapes(qwen_base, tmp_path):
    _, base, base_sd = qwen_base
    train = fake_training_state(base_sd, "qwen2")
    train["text_hidden_fcs.0.weight"] = torch.zeros(96, 96)  # like 6144 vs 3584: a head for another LLM
    with pytest.raises(ModelError, match=r"text_hidden_fcs\.0\.weight: checkpoint \(96, 96\) vs base \(64, 64\)"):
        convert.convert(base, _save(tmp_path, train), tmp_path / "out", lora_r=R, lora_alpha=ALPHA)
    assert not (tmp_path / "out").exists()


def test_unknown_tensor_and_unchanged_and_missing_alpha(qwen_base, tmp_path):
    _, base, base_sd = qwen_base
    train = fake_training_state(base_sd, "qwen2")
    with pytest.raises(ConfigError, match="lora-alpha"):
        convert.convert(base, _save(tmp_path, train), tmp_path / "o1")
    bad = dict(train, **{"mllm.model.some_new_head.weight": torch.zeros(3)})
    with pytest.raises(ModelError, match=r"1 tensor\(s\) with no place in the base model: mllm\.model\.some_new_head"):
        convert.convert(base, _save(tmp_path, bad), tmp_path / "o2", lora_r=R, lora_alpha=ALPHA)
    same = {k: v for k, v in base_sd.items() if k.startswith("text_hidden_fcs.")}
    with pytest.raises(ModelError, match="changed no tensor"):
        convert.convert(base, _save(tmp_path, same), tmp_path / "o3")
    rep = convert.convert(base, _save(tmp_path, same), tmp_path / "o4", allow_unchanged=True)
    assert rep.per_module["text_hidden_fcs"] == {"checkpoint": 4, "changed": 0, "total": 4}
    with pytest.raises(ConfigError, match="disagree"):
        (tmp_path / "train.py").write_text(TRAIN_CONFIG)
        convert.convert(base, _save(tmp_path, train), tmp_path / "o5", config=tmp_path / "train.py", lora_r=8,
                        lora_alpha=16)


def test_frozen_copy_from_another_base_is_an_error(qwen_base, tmp_path):
    _, base, base_sd = qwen_base
    train = fake_training_state(base_sd, "qwen2")
    train[f"{PEFT}model.embed_tokens.original_module.weight"] += 1.0
    with pytest.raises(ModelError, match="trained on another base"):
        convert.convert(base, _save(tmp_path, train), tmp_path / "out", lora_r=R, lora_alpha=ALPHA)


def test_cli_convert_prints_module_table(qwen_base, tmp_path):
    _, base, base_sd = qwen_base
    app = typer.Typer()
    cli_model.register(app)
    ck = _save(tmp_path, fake_training_state(base_sd, "qwen2"))
    res = CliRunner().invoke(app, ["convert", "--base", str(base), "--checkpoint", str(ck), "--out",
                                   str(tmp_path / "out"), "--lora-r", "4", "--lora-alpha", "8"])
    assert res.exit_code == 0, res.output
    assert "grounding_encoder" in res.output and "14 LoRA pairs merged" in res.output
    assert checkpoint.manifest_hash(tmp_path / "out") in res.output
