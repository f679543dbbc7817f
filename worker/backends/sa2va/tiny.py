"""Tiny random Sa2VA models of every supported family, for tests and CPU benchmarks.

Same code paths as the real models, only small: a byte-level BPE tokenizer trained in-process (with
the chat and Sa2VA tokens added), InternViT with 1 layer at 28-px tiles, a 2-layer LM, SAM2 Hiera
with one block per stage at 128 px. `write_official_folder` saves any model in the OFFICIAL key
layout, so tests can round-trip official folder -> loader -> identical outputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from .config import FAMILIES, SA2VA_ADDED_TOKENS, Sa2VAConfig, official_config_dict

if TYPE_CHECKING:
    from .modeling import Sa2VAForSegmentation

CORPUS = [
    "Sure, [SEG]. Please segment the blood vessel in this image.",
    "Please segment the coronary artery. It is [SEG].",
    "There is no vessel visible in this image.",
    "The catheter and the left anterior descending artery are visible.",
    "Sure, it is [SEG]. Segmentation of vessels in X-ray angiography frames.",
    "user assistant system hello world 0123456789 , . ; : ! ? ( ) - _ / \\ ' \"",
] * 4

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INTERNLM2_SPECIALS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

TINY_SAM2 = {
    "vision_config": {
        "backbone_config": {
            "hidden_size": 16,
            "num_attention_heads": 1,
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [16, 32, 64, 128],
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [4, 4, 4, 4],
            "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [4, 4],
            "image_size": [128, 128],
        },
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[32, 32], [16, 16], [8, 8]],
        "fpn_hidden_size": 32,
        "fpn_top_down_levels": [2, 3],
        "num_feature_levels": 3,
    },
    "prompt_encoder_config": {"hidden_size": 32, "image_size": 128, "patch_size": 16, "mask_input_channels": 8},
    "mask_decoder_config": {
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    },
}


def build_tiny_tokenizer(family: str = "qwen2"):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    internlm = FAMILIES[family] == "InternLM2ForCausalLM"
    specials = INTERNLM2_SPECIALS if internlm else QWEN_SPECIALS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if internlm:  # InternLM2's tokenizer puts <s> in front of every encoded text
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
        kw = dict(bos_token="<s>", eos_token="</s>", pad_token="</s>", unk_token="<unk>")
    else:
        kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.add_tokens(SA2VA_ADDED_TOKENS, special_tokens=True)
    return fast


def tiny_official_config(family: str, vocab_size: int) -> dict:
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    internlm = FAMILIES[family] == "InternLM2ForCausalLM"
    vision = {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "image_size": 28,
        "patch_size": 7,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "initializer_factor": 0.1,
        # 26B-style InternViT for the InternLM2 tiny: RMSNorm + q/k norm, no qkv bias
        "norm_type": "rms_norm" if internlm else "layer_norm",
        "qkv_bias": not internlm,
        "qk_normalization": internlm,
    }
    llm = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "tie_word_embeddings": family == "internvl3-qwen2.5",
    }
    if internlm:
        llm.update(bias=False, rope_scaling={"type": "dynamic", "factor": 2.0}, bos_token_id=1, eos_token_id=2, pad_token_id=2)
        template = "internlm2-chat"
    else:
        llm.update(use_sliding_window=False, sliding_window=4096, max_window_layers=2)
        template = "qwen_chat"
    name = "tiny/Sa2VA-InternVL3-tiny" if family == "internvl3-qwen2.5" else f"tiny/Sa2VA-{family}-tiny"
    return official_config_dict(
        family=family, vision=vision, llm=llm, template=template, sam2=TINY_SAM2, name_or_path=name
    )


def build_tiny(family: str = "qwen2", seed: int = 0, dtype: torch.dtype = torch.float32):
    """(model, tokenizer, config) with deterministic random weights."""
    tokenizer = build_tiny_tokenizer(family)
    config = Sa2VAConfig.from_official(tiny_official_config(family, len(tokenizer)), "tiny config")
    return random_model(config, seed).to(dtype).eval(), tokenizer, config


def random_model(config: Sa2VAConfig, seed: int = 0) -> Sa2VAForSegmentation:
    """A model of `config` with seeded random weights, scaled larger than the library's init so
    random models give varied, non-degenerate outputs."""
    from .modeling import Sa2VAForSegmentation

    torch.manual_seed(seed)
    model = Sa2VAForSegmentation(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / max(1, p.shape[-1]) ** 0.5))
        if config.tie_word_embeddings:
            model.language_model.tie_weights()
        # official SAM2 has one random-Fourier matrix for prompts and the image-wide positional embedding
        ge = model.grounding_encoder
        ge.shared_image_embedding.positional_embedding.copy_(ge.prompt_encoder.shared_embedding.positional_embedding)
    return model


def fake_video_memory_tensors(config: Sa2VAConfig) -> dict[str, torch.Tensor]:
    """A few tensors with the official SAM2 video-memory names (ignored by the loader, as in real folders)."""
    c = config.sam_hidden
    o = "grounding_encoder.sam2_model."
    g = torch.Generator().manual_seed(1)
    return {
        o + "maskmem_tpos_enc": torch.randn(7, 1, 1, 64, generator=g),
        o + "no_mem_pos_enc": torch.randn(1, 1, c, generator=g),
        o + "no_obj_ptr": torch.randn(1, c, generator=g),
        o + "mask_downsample.weight": torch.randn(1, 1, 4, 4, generator=g),
        o + "mask_downsample.bias": torch.randn(1, generator=g),
        o + "memory_attention.layers.0.self_attn.q_proj.weight": torch.randn(c, c, generator=g),
        o + "memory_attention.norm.weight": torch.randn(c, generator=g),
        o + "memory_encoder.fuser.layers.0.g_weight": torch.randn(c, generator=g),
        o + "memory_encoder.out_proj.weight": torch.randn(64, c, 1, 1, generator=g),
        o + "obj_ptr_proj.layers.0.weight": torch.randn(c, c, generator=g),
    }


def official_state_dict(model, config: Sa2VAConfig, video_memory: bool = True) -> dict[str, torch.Tensor]:
    from . import keymap

    ours = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    out = keymap.ours_to_official(
        ours, config.llm_arch, keymap.lm_shape(config.text), tied=config.tie_word_embeddings
    )
    if config.llm_arch == "InternLM2ForCausalLM":
        pass
    if video_memory:
        out.update(fake_video_memory_tensors(config))
    return out


def write_official_folder(
    model,
    tokenizer,
    config: Sa2VAConfig,
    out_dir: str | Path,
    *,
    shards: int = 1,
    video_memory: bool = True,
    fmt: str = "safetensors",
    dtype: torch.dtype | None = None,
) -> Path:
    """Save `model` as an official-layout Sa2VA HF folder (config.json, tokenizer, weights)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = official_state_dict(model, config, video_memory)
    if dtype is not None:
        sd = {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}
    raw = config.to_official()
    raw["llm_config"]["vocab_size"] = int(config.text.vocab_size)
    (out / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True))
    tokenizer.save_pretrained(str(out))
    keys = sorted(sd)
    if fmt == "bin":
        torch.save(sd, out / "pytorch_model.bin")
        return out
    if shards <= 1:
        save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
        return out
    per = -(-len(keys) // shards)
    weight_map = {}
    for s in range(shards):
        part = keys[s * per : (s + 1) * per]
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({k: sd[k] for k in part}, str(out / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * v.element_size() for v in sd.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
    )
    return out


def write_tiny_official_folder(out_dir: str | Path, family: str = "qwen2", seed: int = 0, **kw) -> Path:
    model, tokenizer, config = build_tiny(family, seed)
    return write_official_folder(model, tokenizer, config, out_dir, **kw)
