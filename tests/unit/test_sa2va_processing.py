"""Sa2VA input preparation and the official <-> ours key mapping (no model runs here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sa2va_queue.core.exceptions import InputError, ModelError
from sa2va_queue.worker.backends.sa2va import keymap, processing, tiny
from sa2va_queue.worker.backends.sa2va.config import (
    IMG_CONTEXT_TOKEN,
    Sa2VAConfig,
    check_supported,
    reference_official_config,
)


@pytest.fixture(scope="module")
def qwen():
    tok = tiny.build_tiny_tokenizer("qwen2")
    cfg = Sa2VAConfig.from_official(tiny.tiny_official_config("qwen2", len(tok)))
    return cfg, tok


# ---------------------------------------------------------------- tiling
@pytest.mark.parametrize(
    "size,grid",
    [
        ((512, 512), (1, 1)),  # an angiography frame: exactly one tile
        ((448, 448), (1, 1)),
        ((896, 448), (2, 1)),
        ((448, 1344), (1, 3)),
        ((1000, 100), (10, 1)),  # ratio 10 is reachable with 12 tiles
    ],
)
def test_tile_grid(size, grid):
    assert processing.tile_grid(size[0], size[1], 448) == grid


def test_tile_grid_tie_prefers_larger_grid_only_for_large_images():
    # 2:2 and 1:1 both match a square; the larger grid wins when the image covers > half of it
    assert processing.tile_grid(448, 448, 448) == (1, 1)
    assert processing.tile_grid(1000, 1000, 448) == (3, 3)  # 1e6 > 0.5 * 448^2 * 9
    assert processing.tile_grid(600, 600, 448) == (1, 1)  # 3.6e5 < 0.5 * 448^2 * 4
    assert processing.tile_grid(700, 700, 448) == (2, 2)  # 4.9e5 > 0.5*448^2*4, not > 0.5*448^2*9


def test_dynamic_tiles_count_and_thumbnail():
    img = Image.fromarray(np.zeros((100, 300, 3), np.uint8))
    tiles = processing.dynamic_tiles(img, 28)
    cols, rows = processing.tile_grid(300, 100, 28)
    assert len(tiles) == cols * rows + 1  # + thumbnail
    assert all(t.size == (28, 28) for t in tiles)
    one = processing.dynamic_tiles(Image.fromarray(np.zeros((28, 28, 3), np.uint8)), 28)
    assert len(one) == 1  # no thumbnail for a single tile


def test_normalise_is_imagenet():
    arr = np.full((2, 2, 3), 255, np.uint8)
    x = processing.normalise(arr)
    assert x.shape == (3, 2, 2)
    expected = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x[:, 0, 0].numpy(), expected, rtol=1e-6)


def test_prepare_shapes_and_prompt(qwen):
    cfg, tok = qwen
    img = np.random.default_rng(0).integers(0, 255, (40, 90, 3), dtype=np.uint8)
    p = processing.prepare(cfg, tok, img, "<image>Please segment the blood vessel.")
    n = p.pixel_values.shape[0]
    assert n > 1 and p.pixel_values.shape[1:] == (3, cfg.tile_size, cfg.tile_size)
    assert p.sam_pixel_values.shape == (3, cfg.sam_image_size, cfg.sam_image_size)
    assert p.size == (40, 90)
    ctx = tok.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    assert p.input_ids.count(ctx) == n * cfg.num_image_token
    text = tok.decode(p.input_ids)
    assert text.startswith("<|im_start|>user\n<img><IMG_CONTEXT>")
    assert text.endswith("</img>Please segment the blood vessel.<|im_end|>\n<|im_start|>assistant\n")


def test_prompt_without_placeholder_gets_it_first(qwen):
    cfg, _ = qwen
    assert "user\n<img>" in processing.build_prompt(cfg, "Please segment the vessel.", 1)
    with pytest.raises(InputError):
        processing.build_prompt(cfg, "<image><image>two", 1)
    with pytest.raises(InputError):
        processing.build_prompt(cfg, "   ", 1)


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((10, 10, 3), np.float32),
        np.zeros((10, 10, 4), np.uint8),
        np.zeros((1, 10, 3), np.uint8),
        "not an array",
    ],
)
def test_bad_images_raise_input_error(arr):
    with pytest.raises(InputError):
        processing.check_image(arr)


def test_grey_image_is_accepted():
    assert processing.check_image(np.zeros((5, 6), np.uint8)).shape == (5, 6, 3)


# ---------------------------------------------------------------- model pieces vs references
def test_pixel_shuffle_matches_transformers_internvl():
    from transformers import InternVLConfig, InternVLModel

    from sa2va_queue.worker.backends.sa2va.modeling import Sa2VAForSegmentation

    x = torch.randn(2, 8, 8, 6)
    ours = Sa2VAForSegmentation.pixel_shuffle(None, x, 0.5)
    ref = InternVLModel.pixel_shuffle(None, x, 0.5)
    assert torch.equal(ours, ref)
    assert ours.shape == (2, 4, 4, 24)
    del InternVLConfig


def test_wqkv_split_matches_internlm2_layout():
    # Reference: InternLM2 views wqkv(x) as (b, s, kv_heads, groups + 2, head_dim): q..q, k, v per kv head
    heads, kv, hd, hidden = 8, 2, 4, 16
    w = torch.randn((heads + 2 * kv) * hd, hidden)
    x = torch.randn(3, hidden)
    qkv = (x @ w.T).reshape(3, kv, heads // kv + 2, hd)
    q_ref = qkv[:, :, : heads // kv, :].reshape(3, heads * hd)
    k_ref = qkv[:, :, -2, :].reshape(3, kv * hd)
    v_ref = qkv[:, :, -1, :].reshape(3, kv * hd)
    q, k, v = keymap.split_wqkv(w, heads, kv, hd)
    torch.testing.assert_close(x @ q.T, q_ref)
    torch.testing.assert_close(x @ k.T, k_ref)
    torch.testing.assert_close(x @ v.T, v_ref)
    assert torch.equal(keymap.fuse_wqkv(q, k, v, heads, kv, hd), w)


# ---------------------------------------------------------------- key map
@pytest.mark.parametrize("family", ["qwen2", "internlm2", "internvl3-qwen2.5"])
def test_keymap_round_trip(family):
    model, _, cfg = tiny.build_tiny(family)
    off = tiny.official_state_dict(model, cfg, video_memory=True)
    plan = keymap.plan_official_to_ours(off, cfg.llm_arch)
    assert not plan.unexpected and not plan.duplicates
    assert len(plan.ignored) == len(tiny.fake_video_memory_tensors(cfg))
    ours = model.state_dict()
    expected = set(ours) - ({"language_model.lm_head.weight"} if cfg.tie_word_embeddings else set())
    assert plan.targets() == expected
    lm = keymap.lm_shape(cfg.text)
    for op in plan.ops:
        for t, v in zip(op.targets, op.apply([off[s] for s in op.sources], lm)):
            assert torch.equal(v, ours[t]), t


def test_official_names_present():
    model, _, cfg = tiny.build_tiny("internlm2")
    off = tiny.official_state_dict(model, cfg)
    for key in [
        "vision_model.embeddings.class_embedding",
        "vision_model.encoder.layers.0.attn.qkv.weight",
        "vision_model.encoder.layers.0.attn.q_norm.weight",
        "vision_model.encoder.layers.0.ls1",
        "mlp1.0.weight",
        "mlp1.3.bias",
        "language_model.model.tok_embeddings.weight",
        "language_model.model.layers.1.attention.wqkv.weight",
        "language_model.model.layers.1.feed_forward.w2.weight",
        "language_model.output.weight",
        "text_hidden_fcs.2.weight",
        "grounding_encoder.sam2_model.image_encoder.trunk.blocks.0.mlp.layers.1.weight",
        "grounding_encoder.sam2_model.image_encoder.neck.convs.0.conv.weight",
        "grounding_encoder.sam2_model.sam_prompt_encoder.point_embeddings.3.weight",
        "grounding_encoder.sam2_model.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "grounding_encoder.sam2_model.sam_mask_decoder.transformer.layers.0.cross_attn_token_to_image.out_proj.weight",
        "grounding_encoder.sam2_model.sam_mask_decoder.output_hypernetworks_mlps.0.layers.2.weight",
        "grounding_encoder.sam2_model.sam_mask_decoder.output_upscaling.1.weight",
        "grounding_encoder.sam2_model.no_mem_embed",
        "grounding_encoder.sam2_model.memory_encoder.fuser.layers.0.g_weight",
    ]:
        assert key in off, key
    assert not any(k.startswith(("vision_tower.", "multi_modal_projector.", "grounding_encoder.vision_encoder"))
                   for k in off)


# ---------------------------------------------------------------- config
def test_unsupported_families_are_named():
    qwen_vl = {"architectures": ["Sa2VAChatModelQwen"], "model_type": "sa2va_chat", "text_config": {}}
    with pytest.raises(ModelError, match="Qwen-VL based Sa2VA is not supported.*Sa2VAChatModelQwen"):
        check_supported(qwen_vl)
    phi = reference_official_config("Sa2VA-1B")
    phi["llm_config"]["architectures"] = ["Phi3ForCausalLM"]
    with pytest.raises(ModelError, match="Phi3ForCausalLM"):
        Sa2VAConfig.from_official(phi)
    bad_template = reference_official_config("Sa2VA-1B")
    bad_template["template"] = "vicuna"
    with pytest.raises(ModelError, match="vicuna"):
        Sa2VAConfig.from_official(bad_template)


def test_reference_configs_parse():
    c8 = Sa2VAConfig.from_official(reference_official_config("Sa2VA-8B"))
    assert c8.family == "internlm2" and c8.llm_arch == "InternLM2ForCausalLM"
    assert c8.num_image_token == 256 and c8.tile_size == 448 and c8.sam_image_size == 1024
    assert c8.text.num_key_value_heads == 8 and c8.text.attention_bias is False
    c3 = Sa2VAConfig.from_official(reference_official_config("Sa2VA-InternVL3-8B"))
    assert c3.family == "internvl3-qwen2.5"
