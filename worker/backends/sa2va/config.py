"""Sa2VA configuration: the official `config.json` fields <-> transformers 5 sub-configs.

An official Sa2VA HF folder (InternVL-based: Sa2VA-1B/4B/8B/26B, Sa2VA-InternVL3-*) has a
`config.json` with `architectures: ["Sa2VAChatModel"]`, `model_type: "sa2va_chat"` and
- `vision_config`: InternViT (`InternVisionModel`): hidden_size, num_hidden_layers, num_attention_heads,
  intermediate_size, image_size, patch_size, qkv_bias, qk_normalization, norm_type, layer_norm_eps,
  hidden_act, initializer_factor (the layer-scale init),
- `llm_config`: `Qwen2ForCausalLM` (1B, 4B, InternVL3-based) or `InternLM2ForCausalLM` (8B, 26B),
- `template` (`qwen_chat` / `internlm2_chat`, '-' or '_'), `downsample_ratio`, `ps_version`,
  `select_layer`, `force_image_size`, `min/max_dynamic_patch`, `use_thumbnail`.
The SAM2 grounding encoder has no config in the official folder: it is always SAM2 Hiera-L. Our
tiny test folders add a `sam2_config` dict (an extension the official code ignores).

Qwen-VL based Sa2VA (`Sa2VAChatModelQwen`, `text_config`) and other LLMs are rejected with a
ModelError that says what was found.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sa2va_queue.core.exceptions import ModelError

# family label -> official llm architecture
FAMILIES = {
    "qwen2": "Qwen2ForCausalLM",  # Sa2VA-1B / 4B (InternVL2.5 + Qwen2.5 Instruct)
    "internvl3-qwen2.5": "Qwen2ForCausalLM",  # Sa2VA-InternVL3-2B/8B/14B
    "internlm2": "InternLM2ForCausalLM",  # Sa2VA-8B / 26B (InternLM2.5 chat)
}
SUPPORTED_LLM_ARCHS = ("Qwen2ForCausalLM", "InternLM2ForCausalLM")

# Both supported templates render one user turn identically (no system prompt in predict_forward).
CHAT_INSTRUCTION = "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n"
TEMPLATES: dict[str, dict[str, Any]] = {
    "qwen_chat": {"instruction": CHAT_INSTRUCTION, "stop_words": ["<|im_end|>", "<|endoftext|>"]},
    "internlm2_chat": {"instruction": CHAT_INSTRUCTION, "stop_words": ["<|im_end|>"]},
}

IMG_START_TOKEN = "<img>"
IMG_END_TOKEN = "</img>"
IMG_CONTEXT_TOKEN = "<IMG_CONTEXT>"
SEG_TOKEN = "[SEG]"
# Tokens the Sa2VA training adds to the base tokenizer.
SA2VA_ADDED_TOKENS = ["[SEG]", "<p>", "</p>", "<vp>", "</vp>", "<img>", "</img>", "<IMG_CONTEXT>"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# predict_forward fixes these regardless of config.json
MIN_TILES = 1
MAX_TILES = 12
USE_THUMBNAIL = True
MAX_NEW_TOKENS = 2048
# What a Sa2VA fine-tune answers to a segmentation prompt; generation checks it as a draft in one
# forward (modeling.generate) and decodes step by step only where the model says otherwise.
DRAFT_ANSWER = "Sure, [SEG]."

# SAM2 Hiera-L as built by the official `SAM2()` (projects/sa2va/hf/models/sam2.py).
SAM2_HIERA_L = {
    "vision_config": {
        "backbone_config": {
            "hidden_size": 144,
            "num_attention_heads": 2,
            "blocks_per_stage": [2, 6, 36, 4],
            "embed_dim_per_stage": [144, 288, 576, 1152],
            "num_attention_heads_per_stage": [2, 4, 8, 16],
            "window_size_per_stage": [8, 4, 16, 8],
            "global_attention_blocks": [23, 33, 43],
            "window_positional_embedding_background_size": [7, 7],
            "image_size": [1024, 1024],
        },
        "backbone_channel_list": [1152, 576, 288, 144],
        "backbone_feature_sizes": [[256, 256], [128, 128], [64, 64]],
        "fpn_hidden_size": 256,
        "fpn_top_down_levels": [2, 3],
        "num_feature_levels": 3,
    },
    "prompt_encoder_config": {"hidden_size": 256, "image_size": 1024, "patch_size": 16},
    "mask_decoder_config": {"hidden_size": 256},
}


def _normalise_template(name: Any) -> str:
    if not isinstance(name, str):
        raise ModelError(f"config.json 'template' must be a string, found {name!r}")
    key = name.strip().replace("-", "_")
    if key not in TEMPLATES:
        raise ModelError(
            f"unsupported chat template {name!r} in config.json; supported: {', '.join(sorted(TEMPLATES))}"
        )
    return key


def _build_sam2_config(raw: dict | None):
    from transformers import Sam2Config, Sam2HieraDetConfig, Sam2VisionConfig

    d = copy.deepcopy(raw if raw is not None else SAM2_HIERA_L)
    vc = d.get("vision_config", {})
    bb = Sam2HieraDetConfig(**vc.pop("backbone_config", {}))
    vision = Sam2VisionConfig(backbone_config=bb, **vc)
    cfg = Sam2Config(
        vision_config=vision,
        prompt_encoder_config=d.get("prompt_encoder_config"),
        mask_decoder_config=d.get("mask_decoder_config"),
    )
    cfg._attn_implementation = "sdpa"
    return cfg


def _vision_from_official(v: dict):
    from transformers import InternVLVisionConfig

    arch = (v.get("architectures") or ["InternVisionModel"])[0]
    if arch != "InternVisionModel":
        raise ModelError(f"unsupported vision tower {arch!r} in config.json vision_config (need InternVisionModel)")
    size = int(v.get("image_size", 448))
    patch = int(v.get("patch_size", 14))
    cfg = InternVLVisionConfig(
        hidden_size=int(v["hidden_size"]),
        num_hidden_layers=int(v["num_hidden_layers"]),
        num_attention_heads=int(v["num_attention_heads"]),
        intermediate_size=int(v["intermediate_size"]),
        hidden_act=v.get("hidden_act", "gelu"),
        norm_type=v.get("norm_type", "rms_norm"),
        layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)),
        attention_bias=bool(v.get("qkv_bias", False)),
        use_qk_norm=bool(v.get("qk_normalization", False)),
        layer_scale_init_value=float(v.get("initializer_factor", 0.1)),
        image_size=[size, size],
        patch_size=[patch, patch],
        use_mean_pooling=True,  # InternViT has no final LayerNorm
        use_absolute_position_embeddings=True,
        use_mask_token=False,
    )
    cfg._attn_implementation = "sdpa"
    return cfg


_COMMON_LLM_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "hidden_act",
    "max_position_embeddings",
    "rms_norm_eps",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


def _rope_kwargs(llm: dict) -> dict:
    out: dict[str, Any] = {}
    if "rope_parameters" in llm and llm["rope_parameters"]:
        out["rope_parameters"] = llm["rope_parameters"]
        return out
    out["rope_theta"] = float(llm.get("rope_theta", 10000.0))
    scaling = llm.get("rope_scaling")
    if scaling:
        out["rope_scaling"] = dict(scaling)
    return out


def _text_from_official(llm: dict, tie: bool | None):
    from transformers import LlamaConfig, Qwen2Config

    arch = (llm.get("architectures") or [None])[0]
    kw = {k: llm[k] for k in _COMMON_LLM_FIELDS if k in llm and llm[k] is not None}
    kw.update(_rope_kwargs(llm))
    tie_words = bool(llm.get("tie_word_embeddings", False)) if tie is None else tie
    if arch == "Qwen2ForCausalLM":
        for k in ("use_sliding_window", "sliding_window", "max_window_layers"):
            if k in llm:
                kw[k] = llm[k]
        if not kw.get("use_sliding_window"):
            kw["sliding_window"] = None
        cfg = Qwen2Config(tie_word_embeddings=tie_words, **kw)
    elif arch == "InternLM2ForCausalLM":
        # InternLM2 == Llama with a fused wqkv and its own names; `bias` applies to wqkv and wo.
        cfg = LlamaConfig(
            attention_bias=bool(llm.get("bias", True)), mlp_bias=False, tie_word_embeddings=tie_words, **kw
        )
    else:
        raise ModelError(
            f"unsupported language model {arch!r} in config.json llm_config.architectures; "
            f"supported: {', '.join(SUPPORTED_LLM_ARCHS)}"
        )
    cfg._attn_implementation = "sdpa"
    return cfg


def _detect_family(raw: dict, arch: str) -> str:
    explicit = raw.get("sa2va_family")
    if explicit:
        if explicit not in FAMILIES or FAMILIES[explicit] != arch:
            raise ModelError(f"config.json sa2va_family={explicit!r} does not match llm architecture {arch!r}")
        return explicit
    if arch == "InternLM2ForCausalLM":
        return "internlm2"
    names = " ".join(
        str(x)
        for x in (
            raw.get("_name_or_path"),
            raw.get("llm_config", {}).get("_name_or_path"),
            raw.get("vision_config", {}).get("_name_or_path"),
        )
        if x
    ).lower()
    return "internvl3-qwen2.5" if "internvl3" in names else "qwen2"


def check_supported(raw: dict, where: str = "config.json") -> None:
    """Raise ModelError naming what was found if `raw` is not an InternVL-based Sa2VA config."""
    archs = raw.get("architectures") or []
    mtype = raw.get("model_type")
    if "text_config" in raw and "llm_config" not in raw or any("Qwen" in a and "VL" in a for a in archs) or any(
        a.startswith("Sa2VAChatModelQwen") for a in archs
    ):
        raise ModelError(
            f"{where}: Qwen-VL based Sa2VA is not supported (found architectures={archs}, model_type={mtype!r}, "
            f"keys={sorted(raw)[:12]}); supported are the InternVL-based Sa2VA models (Sa2VAChatModel with "
            f"llm_config {'/'.join(SUPPORTED_LLM_ARCHS)})"
        )
    if "llm_config" not in raw or "vision_config" not in raw:
        raise ModelError(
            f"{where}: not a Sa2VA config (architectures={archs}, model_type={mtype!r}): needs 'llm_config' and "
            "'vision_config'"
        )
    arch = (raw["llm_config"].get("architectures") or [None])[0]
    if arch not in SUPPORTED_LLM_ARCHS:
        raise ModelError(
            f"{where}: unsupported language model {arch!r} (architectures={archs}); supported: "
            f"{', '.join(SUPPORTED_LLM_ARCHS)}"
        )


@dataclass
class Sa2VAConfig:
    family: str
    llm_arch: str
    vision: Any  # InternVLVisionConfig
    text: Any  # Qwen2Config | LlamaConfig
    sam2: Any  # Sam2Config
    template: str
    downsample_ratio: float = 0.5
    ps_version: str = "v2"
    select_layer: int = -1
    tile_size: int = 448
    raw: dict = field(default_factory=dict)  # the config.json this came from (written back on save)

    @property
    def patch_size(self) -> int:
        p = self.vision.patch_size
        return int(p[0] if isinstance(p, (list, tuple)) else p)

    @property
    def num_image_token(self) -> int:
        return int((self.tile_size // self.patch_size) ** 2 * self.downsample_ratio**2)

    @property
    def sam_image_size(self) -> int:
        s = self.sam2.prompt_encoder_config.image_size
        return int(s[0] if isinstance(s, (list, tuple)) else s)

    @property
    def sam_hidden(self) -> int:
        return int(self.sam2.vision_config.fpn_hidden_size)

    @property
    def stop_words(self) -> list[str]:
        return list(TEMPLATES[self.template]["stop_words"])

    @property
    def instruction(self) -> str:
        return TEMPLATES[self.template]["instruction"]

    @property
    def tie_word_embeddings(self) -> bool:
        return bool(getattr(self.text, "tie_word_embeddings", False))

    @classmethod
    def from_official(cls, raw: dict, where: str = "config.json", tie_word_embeddings: bool | None = None):
        check_supported(raw, where)
        llm = raw["llm_config"]
        arch = llm["architectures"][0]
        vision = _vision_from_official(raw["vision_config"])
        text = _text_from_official(llm, tie_word_embeddings)
        select_layer = int(raw.get("select_layer", -1))
        if select_layer != -1:
            raise ModelError(f"{where}: select_layer={select_layer} is not supported (Sa2VA uses -1)")
        ps_version = raw.get("ps_version", "v2")
        if ps_version != "v2":
            raise ModelError(f"{where}: ps_version={ps_version!r} is not supported (Sa2VA uses 'v2')")
        vsize = int(raw["vision_config"].get("image_size", 448))
        tile = int(raw.get("force_image_size") or vsize)
        return cls(
            family=_detect_family(raw, arch),
            llm_arch=arch,
            vision=vision,
            text=text,
            sam2=_build_sam2_config(raw.get("sam2_config")),
            template=_normalise_template(raw.get("template", "qwen_chat")),
            downsample_ratio=float(raw.get("downsample_ratio", 0.5)),
            ps_version=ps_version,
            select_layer=select_layer,
            tile_size=tile,
            raw=copy.deepcopy(raw),
        )

    @classmethod
    def from_folder(cls, folder: str | Path, tie_word_embeddings: bool | None = None) -> "Sa2VAConfig":
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise ModelError(f"{folder}: no config.json (is this a Sa2VA HF folder?)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelError(f"{path}: unreadable config.json ({exc})") from None
        return cls.from_official(raw, str(path), tie_word_embeddings)

    def to_official(self) -> dict:
        return copy.deepcopy(self.raw)


def official_config_dict(
    *,
    family: str,
    vision: dict,
    llm: dict,
    template: str,
    sam2: dict | None = None,
    downsample_ratio: float = 0.5,
    force_image_size: int | None = None,
    name_or_path: str = "",
) -> dict:
    """A config.json dict with the official field names (used by tiny.py and tests)."""
    arch = FAMILIES[family]
    vision = {"architectures": ["InternVisionModel"], "model_type": "intern_vit_6b", **vision}
    llm = {"architectures": [arch], "model_type": "qwen2" if arch == "Qwen2ForCausalLM" else "internlm2", **llm}
    out = {
        "_name_or_path": name_or_path,
        "architectures": ["Sa2VAChatModel"],
        "auto_map": {
            "AutoConfig": "configuration_sa2va_chat.Sa2VAChatConfig",
            "AutoModel": "modeling_sa2va_chat.Sa2VAChatModel",
            "AutoModelForCausalLM": "modeling_sa2va_chat.Sa2VAChatModel",
        },
        "model_type": "sa2va_chat",
        "vision_config": vision,
        "llm_config": llm,
        "template": template,
        "downsample_ratio": downsample_ratio,
        "ps_version": "v2",
        "select_layer": -1,
        "force_image_size": force_image_size or vision.get("image_size", 448),
        "dynamic_image_size": True,
        "use_thumbnail": True,
        "min_dynamic_patch": 1,
        "max_dynamic_patch": 12,
        "use_backbone_lora": 0,
        "use_llm_lora": 0,
        "pad2square": False,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }
    if sam2 is not None:
        out["sam2_config"] = sam2
    return out


# Published model shapes (for placement planning and `inspect` without weights). Vocab sizes are the
# base tokenizer plus the Sa2VA added tokens, rounded as in the released checkpoints' configs.
_VIT_300M = {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "intermediate_size": 4096,
             "image_size": 448, "patch_size": 14, "norm_type": "layer_norm", "qkv_bias": True,
             "qk_normalization": False, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "initializer_factor": 1.0}
_VIT_6B = {"hidden_size": 3200, "num_hidden_layers": 45, "num_attention_heads": 25, "intermediate_size": 12800,
           "image_size": 448, "patch_size": 14, "norm_type": "rms_norm", "qkv_bias": False,
           "qk_normalization": True, "layer_norm_eps": 1e-6, "hidden_act": "gelu", "initializer_factor": 0.1}


def _qwen(h, n, heads, kv, inter, vocab, tie):
    return {"hidden_size": h, "num_hidden_layers": n, "num_attention_heads": heads, "num_key_value_heads": kv,
            "intermediate_size": inter, "vocab_size": vocab, "tie_word_embeddings": tie, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "hidden_act": "silu", "use_sliding_window": False}


def _internlm2(h, n, heads, kv, inter, vocab):
    return {"hidden_size": h, "num_hidden_layers": n, "num_attention_heads": heads, "num_key_value_heads": kv,
            "intermediate_size": inter, "vocab_size": vocab, "bias": False, "rope_theta": 1000000.0,
            "rope_scaling": {"type": "dynamic", "factor": 2.0}, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 32768, "hidden_act": "silu", "tie_word_embeddings": False}


REFERENCE_MODELS = {
    "Sa2VA-1B": ("qwen2", _VIT_300M, _qwen(896, 24, 14, 2, 4864, 151674, True), "qwen_chat"),
    "Sa2VA-4B": ("qwen2", _VIT_300M, _qwen(2048, 36, 16, 2, 11008, 151674, True), "qwen_chat"),
    "Sa2VA-8B": ("internlm2", _VIT_300M, _internlm2(4096, 32, 32, 8, 14336, 92553), "internlm2_chat"),
    "Sa2VA-26B": ("internlm2", _VIT_6B, _internlm2(6144, 48, 48, 8, 16384, 92553), "internlm2_chat"),
    "Sa2VA-InternVL3-8B": ("internvl3-qwen2.5", _VIT_300M, _qwen(3584, 28, 28, 4, 18944, 151682, False), "qwen_chat"),
}


def reference_official_config(name: str) -> dict:
    if name not in REFERENCE_MODELS:
        raise ModelError(f"unknown reference model {name!r}; known: {', '.join(REFERENCE_MODELS)}")
    family, vision, llm, template = REFERENCE_MODELS[name]
    return official_config_dict(family=family, vision=dict(vision), llm=dict(llm), template=template,
                                name_or_path=f"ByteDance/{name}")
