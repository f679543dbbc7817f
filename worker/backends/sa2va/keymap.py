"""Official Sa2VA HF key names <-> our module names, as one explicit, two-way mapping table.

Each `Rule` pairs a template over official keys with template(s) over our keys. Placeholders:
`{i}` / `{j}` a layer or row number, `{p}` weight|bias, `{a}` an attention name, `{r}` any rest.
The same table drives loading (official -> ours, `plan_official_to_ours`) and writing an official
folder (ours -> official, `ours_to_official`). Kinds:

- rename: one tensor to one tensor.
- qkv3:   InternViT fused `attn.qkv` -> q/k/v (three equal chunks along dim 0).
- wqkv:   InternLM2 fused `attention.wqkv` laid out per key/value head as [q * groups, k, v]
          -> Llama q/k/v (see `split_wqkv`).
- stack:  SAM2 `point_embeddings.{j}` (1, C) rows -> one `point_embed` (n, C) embedding.
- copy:   one official tensor feeds two of our tensors (SAM2's random-Fourier matrix is used by the
          prompt encoder and by the image-wide positional embedding).
- ignore: present in official folders, unused by single-image inference; each with its reason.

Anything that matches no rule is an unexpected key; any parameter of ours that no rule fills is a
missing key. `checkpoint.py` turns both into a ModelError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch

PLACEHOLDERS = {
    "i": r"\d+",
    "j": r"\d+",
    "k": r"\d+",
    "p": r"weight|bias",
    "a": r"self_attn|cross_attn_token_to_image|cross_attn_image_to_token|final_attn_token_to_image",
    "n": r"q_proj|k_proj|v_proj",
    "r": r".+",
    "f": r"fc1|fc2",
    "qk": r"q_norm|k_norm",
}


@dataclass(frozen=True)
class Rule:
    official: str
    ours: tuple[str, ...]
    kind: str = "rename"
    note: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "_off_re", _compile(self.official))
        object.__setattr__(self, "_our_res", tuple(_compile(t) for t in self.ours))


def _compile(template: str) -> re.Pattern:
    out, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(f"(?P<{m.group(1)}>{PLACEHOLDERS[m.group(1)]})")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("".join(out) + r"\Z")


def R(official: str, *ours: str, kind: str = "rename", note: str = "") -> Rule:
    return Rule(official, tuple(ours), kind, note)


# ----------------------------------------------------------------------------------------------
# Vision tower: InternViT -> transformers InternVLVisionModel
VISION_RULES = [
    # vision_model.embeddings.class_embedding            -> vision_tower.embeddings.cls_token
    R("vision_model.embeddings.class_embedding", "vision_tower.embeddings.cls_token"),
    # vision_model.embeddings.patch_embedding.weight     -> vision_tower.embeddings.patch_embeddings.projection.weight
    R("vision_model.embeddings.patch_embedding.{p}", "vision_tower.embeddings.patch_embeddings.projection.{p}"),
    # vision_model.embeddings.position_embedding         -> vision_tower.embeddings.position_embeddings
    R("vision_model.embeddings.position_embedding", "vision_tower.embeddings.position_embeddings"),
    # vision_model.encoder.layers.3.attn.qkv.weight      -> vision_tower.encoder.layer.3.attention.{q,k,v}_proj.weight
    R(
        "vision_model.encoder.layers.{i}.attn.qkv.{p}",
        "vision_tower.encoder.layer.{i}.attention.q_proj.{p}",
        "vision_tower.encoder.layer.{i}.attention.k_proj.{p}",
        "vision_tower.encoder.layer.{i}.attention.v_proj.{p}",
        kind="qkv3",
    ),
    # vision_model.encoder.layers.3.attn.proj.weight     -> vision_tower.encoder.layer.3.attention.projection_layer.weight
    R("vision_model.encoder.layers.{i}.attn.proj.{p}", "vision_tower.encoder.layer.{i}.attention.projection_layer.{p}"),
    # vision_model.encoder.layers.3.attn.q_norm.weight   -> vision_tower.encoder.layer.3.attention.q_norm.weight (6B)
    R("vision_model.encoder.layers.{i}.attn.{qk}.weight", "vision_tower.encoder.layer.{i}.attention.{qk}.weight"),
    # vision_model.encoder.layers.3.ls1                  -> vision_tower.encoder.layer.3.lambda_1
    R("vision_model.encoder.layers.{i}.ls1", "vision_tower.encoder.layer.{i}.lambda_1"),
    R("vision_model.encoder.layers.{i}.ls2", "vision_tower.encoder.layer.{i}.lambda_2"),
    # vision_model.encoder.layers.3.norm1.weight         -> vision_tower.encoder.layer.3.layernorm_before.weight
    R("vision_model.encoder.layers.{i}.norm1.{p}", "vision_tower.encoder.layer.{i}.layernorm_before.{p}"),
    R("vision_model.encoder.layers.{i}.norm2.{p}", "vision_tower.encoder.layer.{i}.layernorm_after.{p}"),
    # vision_model.encoder.layers.3.mlp.fc1.weight       -> vision_tower.encoder.layer.3.mlp.fc1.weight
    R("vision_model.encoder.layers.{i}.mlp.{f}.{p}", "vision_tower.encoder.layer.{i}.mlp.{f}.{p}"),
]

# Projector: mlp1 = Sequential(LayerNorm, Linear, GELU, Linear)
PROJECTOR_RULES = [
    # mlp1.0.weight -> multi_modal_projector.layer_norm.weight
    R("mlp1.0.{p}", "multi_modal_projector.layer_norm.{p}"),
    # mlp1.1.weight -> multi_modal_projector.linear_1.weight
    R("mlp1.1.{p}", "multi_modal_projector.linear_1.{p}"),
    # mlp1.3.weight -> multi_modal_projector.linear_2.weight
    R("mlp1.3.{p}", "multi_modal_projector.linear_2.{p}"),
]

TEXT_FCS_RULES = [
    # text_hidden_fcs.0.weight -> text_hidden_fcs.0.weight (Linear, ReLU, Linear, Dropout)
    R("text_hidden_fcs.{i}.{p}", "text_hidden_fcs.{i}.{p}"),
]

# Qwen2 keeps transformers' own names.
QWEN2_RULES = [
    # language_model.model.layers.0.self_attn.q_proj.weight -> (same)
    R("language_model.{r}", "language_model.{r}"),
]

# InternLM2 -> transformers LlamaForCausalLM
INTERNLM2_RULES = [
    # language_model.model.tok_embeddings.weight        -> language_model.model.embed_tokens.weight
    R("language_model.model.tok_embeddings.weight", "language_model.model.embed_tokens.weight"),
    # language_model.model.layers.5.attention.wqkv.weight -> language_model.model.layers.5.self_attn.{q,k,v}_proj.weight
    R(
        "language_model.model.layers.{i}.attention.wqkv.{p}",
        "language_model.model.layers.{i}.self_attn.q_proj.{p}",
        "language_model.model.layers.{i}.self_attn.k_proj.{p}",
        "language_model.model.layers.{i}.self_attn.v_proj.{p}",
        kind="wqkv",
    ),
    # language_model.model.layers.5.attention.wo.weight -> language_model.model.layers.5.self_attn.o_proj.weight
    R("language_model.model.layers.{i}.attention.wo.{p}", "language_model.model.layers.{i}.self_attn.o_proj.{p}"),
    # language_model.model.layers.5.feed_forward.w1.weight -> language_model.model.layers.5.mlp.gate_proj.weight
    R("language_model.model.layers.{i}.feed_forward.w1.weight", "language_model.model.layers.{i}.mlp.gate_proj.weight"),
    # language_model.model.layers.5.feed_forward.w3.weight -> language_model.model.layers.5.mlp.up_proj.weight
    R("language_model.model.layers.{i}.feed_forward.w3.weight", "language_model.model.layers.{i}.mlp.up_proj.weight"),
    # language_model.model.layers.5.feed_forward.w2.weight -> language_model.model.layers.5.mlp.down_proj.weight
    R("language_model.model.layers.{i}.feed_forward.w2.weight", "language_model.model.layers.{i}.mlp.down_proj.weight"),
    # language_model.model.layers.5.attention_norm.weight -> language_model.model.layers.5.input_layernorm.weight
    R("language_model.model.layers.{i}.attention_norm.weight", "language_model.model.layers.{i}.input_layernorm.weight"),
    # language_model.model.layers.5.ffn_norm.weight     -> language_model.model.layers.5.post_attention_layernorm.weight
    R(
        "language_model.model.layers.{i}.ffn_norm.weight",
        "language_model.model.layers.{i}.post_attention_layernorm.weight",
    ),
    # language_model.model.norm.weight                  -> language_model.model.norm.weight
    R("language_model.model.norm.weight", "language_model.model.norm.weight"),
    # language_model.output.weight                      -> language_model.lm_head.weight
    R("language_model.output.weight", "language_model.lm_head.weight"),
]

O = "grounding_encoder.sam2_model."  # official SAM2 prefix
G = "grounding_encoder."  # our Sam2Model
SAM2_RULES = [
    # ---- image encoder (Hiera trunk + FPN neck)
    # ...sam2_model.image_encoder.trunk.pos_embed        -> grounding_encoder.vision_encoder.backbone.pos_embed
    R(O + "image_encoder.trunk.pos_embed", G + "vision_encoder.backbone.pos_embed"),
    R(O + "image_encoder.trunk.pos_embed_window", G + "vision_encoder.backbone.pos_embed_window"),
    # ...trunk.patch_embed.proj.weight                   -> ...backbone.patch_embed.projection.weight
    R(O + "image_encoder.trunk.patch_embed.proj.{p}", G + "vision_encoder.backbone.patch_embed.projection.{p}"),
    # ...trunk.blocks.7.norm1.weight                     -> ...backbone.blocks.7.layer_norm1.weight
    R(O + "image_encoder.trunk.blocks.{i}.norm1.{p}", G + "vision_encoder.backbone.blocks.{i}.layer_norm1.{p}"),
    R(O + "image_encoder.trunk.blocks.{i}.norm2.{p}", G + "vision_encoder.backbone.blocks.{i}.layer_norm2.{p}"),
    # ...trunk.blocks.7.attn.qkv.weight                  -> ...backbone.blocks.7.attn.qkv.weight
    R(O + "image_encoder.trunk.blocks.{i}.attn.qkv.{p}", G + "vision_encoder.backbone.blocks.{i}.attn.qkv.{p}"),
    R(O + "image_encoder.trunk.blocks.{i}.attn.proj.{p}", G + "vision_encoder.backbone.blocks.{i}.attn.proj.{p}"),
    # ...trunk.blocks.7.mlp.layers.0.weight              -> ...backbone.blocks.7.mlp.proj_in.weight
    R(O + "image_encoder.trunk.blocks.{i}.mlp.layers.0.{p}", G + "vision_encoder.backbone.blocks.{i}.mlp.proj_in.{p}"),
    # ...trunk.blocks.7.mlp.layers.1.weight              -> ...backbone.blocks.7.mlp.proj_out.weight
    R(O + "image_encoder.trunk.blocks.{i}.mlp.layers.1.{p}", G + "vision_encoder.backbone.blocks.{i}.mlp.proj_out.{p}"),
    # ...trunk.blocks.2.proj.weight (stage change)       -> ...backbone.blocks.2.proj.weight
    R(O + "image_encoder.trunk.blocks.{i}.proj.{p}", G + "vision_encoder.backbone.blocks.{i}.proj.{p}"),
    # ...image_encoder.neck.convs.0.conv.weight          -> ...vision_encoder.neck.convs.0.weight
    R(O + "image_encoder.neck.convs.{i}.conv.{p}", G + "vision_encoder.neck.convs.{i}.{p}"),
    # ---- first-frame memory token
    # ...sam2_model.no_mem_embed                         -> grounding_encoder.no_memory_embedding
    R(O + "no_mem_embed", G + "no_memory_embedding"),
    # ---- prompt encoder
    # ...sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    #      -> grounding_encoder.prompt_encoder.shared_embedding.positional_embedding
    #      +  grounding_encoder.shared_image_embedding.positional_embedding  (the same matrix, used twice)
    R(
        O + "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        G + "prompt_encoder.shared_embedding.positional_embedding",
        G + "shared_image_embedding.positional_embedding",
        kind="copy",
    ),
    # ...sam_prompt_encoder.point_embeddings.0..3.weight (1, C) each -> prompt_encoder.point_embed.weight (4, C)
    R(O + "sam_prompt_encoder.point_embeddings.{j}.weight", G + "prompt_encoder.point_embed.weight", kind="stack"),
    R(O + "sam_prompt_encoder.not_a_point_embed.weight", G + "prompt_encoder.not_a_point_embed.weight"),
    R(O + "sam_prompt_encoder.no_mask_embed.weight", G + "prompt_encoder.no_mask_embed.weight"),
    # ...sam_prompt_encoder.mask_downscaling.0/1/3/4/6   -> prompt_encoder.mask_embed.conv1/layer_norm1/conv2/layer_norm2/conv3
    R(O + "sam_prompt_encoder.mask_downscaling.0.{p}", G + "prompt_encoder.mask_embed.conv1.{p}"),
    R(O + "sam_prompt_encoder.mask_downscaling.1.{p}", G + "prompt_encoder.mask_embed.layer_norm1.{p}"),
    R(O + "sam_prompt_encoder.mask_downscaling.3.{p}", G + "prompt_encoder.mask_embed.conv2.{p}"),
    R(O + "sam_prompt_encoder.mask_downscaling.4.{p}", G + "prompt_encoder.mask_embed.layer_norm2.{p}"),
    R(O + "sam_prompt_encoder.mask_downscaling.6.{p}", G + "prompt_encoder.mask_embed.conv3.{p}"),
    # ---- mask decoder
    # ...sam_mask_decoder.transformer.layers.0.self_attn.q_proj.weight -> mask_decoder.transformer.layers.0.self_attn.q_proj.weight
    R(
        O + "sam_mask_decoder.transformer.layers.{i}.{a}.{n}.{p}",
        G + "mask_decoder.transformer.layers.{i}.{a}.{n}.{p}",
    ),
    # ...transformer.layers.0.cross_attn_image_to_token.out_proj.weight -> ...cross_attn_image_to_token.o_proj.weight
    R(
        O + "sam_mask_decoder.transformer.layers.{i}.{a}.out_proj.{p}",
        G + "mask_decoder.transformer.layers.{i}.{a}.o_proj.{p}",
    ),
    # ...transformer.layers.0.norm3.weight               -> ...transformer.layers.0.layer_norm3.weight
    R(O + "sam_mask_decoder.transformer.layers.{i}.norm{k}.{p}", G + "mask_decoder.transformer.layers.{i}.layer_norm{k}.{p}"),
    # ...transformer.layers.0.mlp.layers.0/1.weight      -> ...transformer.layers.0.mlp.proj_in/proj_out.weight
    R(O + "sam_mask_decoder.transformer.layers.{i}.mlp.layers.0.{p}", G + "mask_decoder.transformer.layers.{i}.mlp.proj_in.{p}"),
    R(O + "sam_mask_decoder.transformer.layers.{i}.mlp.layers.1.{p}", G + "mask_decoder.transformer.layers.{i}.mlp.proj_out.{p}"),
    # ...transformer.final_attn_token_to_image.k_proj.weight -> (same)
    R(O + "sam_mask_decoder.transformer.{a}.{n}.{p}", G + "mask_decoder.transformer.{a}.{n}.{p}"),
    # ...transformer.final_attn_token_to_image.out_proj.weight -> ...final_attn_token_to_image.o_proj.weight
    R(O + "sam_mask_decoder.transformer.{a}.out_proj.{p}", G + "mask_decoder.transformer.{a}.o_proj.{p}"),
    # ...transformer.norm_final_attn.weight              -> ...transformer.layer_norm_final_attn.weight
    R(O + "sam_mask_decoder.transformer.norm_final_attn.{p}", G + "mask_decoder.transformer.layer_norm_final_attn.{p}"),
    R(O + "sam_mask_decoder.iou_token.weight", G + "mask_decoder.iou_token.weight"),
    R(O + "sam_mask_decoder.mask_tokens.weight", G + "mask_decoder.mask_tokens.weight"),
    R(O + "sam_mask_decoder.obj_score_token.weight", G + "mask_decoder.obj_score_token.weight"),
    # ...sam_mask_decoder.output_upscaling.0/1/3         -> mask_decoder.upscale_conv1/upscale_layer_norm/upscale_conv2
    R(O + "sam_mask_decoder.output_upscaling.0.{p}", G + "mask_decoder.upscale_conv1.{p}"),
    R(O + "sam_mask_decoder.output_upscaling.1.{p}", G + "mask_decoder.upscale_layer_norm.{p}"),
    R(O + "sam_mask_decoder.output_upscaling.3.{p}", G + "mask_decoder.upscale_conv2.{p}"),
    # ...sam_mask_decoder.conv_s0.weight                 -> mask_decoder.conv_s0.weight
    R(O + "sam_mask_decoder.conv_s0.{p}", G + "mask_decoder.conv_s0.{p}"),
    R(O + "sam_mask_decoder.conv_s1.{p}", G + "mask_decoder.conv_s1.{p}"),
    # 3-layer MLP heads: layers.0 -> proj_in, layers.1 -> layers.0, layers.2 -> proj_out
    # ...output_hypernetworks_mlps.2.layers.1.weight     -> mask_decoder.output_hypernetworks_mlps.2.layers.0.weight
    R(O + "sam_mask_decoder.output_hypernetworks_mlps.{i}.layers.0.{p}", G + "mask_decoder.output_hypernetworks_mlps.{i}.proj_in.{p}"),
    R(O + "sam_mask_decoder.output_hypernetworks_mlps.{i}.layers.1.{p}", G + "mask_decoder.output_hypernetworks_mlps.{i}.layers.0.{p}"),
    R(O + "sam_mask_decoder.output_hypernetworks_mlps.{i}.layers.2.{p}", G + "mask_decoder.output_hypernetworks_mlps.{i}.proj_out.{p}"),
    R(O + "sam_mask_decoder.iou_prediction_head.layers.0.{p}", G + "mask_decoder.iou_prediction_head.proj_in.{p}"),
    R(O + "sam_mask_decoder.iou_prediction_head.layers.1.{p}", G + "mask_decoder.iou_prediction_head.layers.0.{p}"),
    R(O + "sam_mask_decoder.iou_prediction_head.layers.2.{p}", G + "mask_decoder.iou_prediction_head.proj_out.{p}"),
    R(O + "sam_mask_decoder.pred_obj_score_head.layers.0.{p}", G + "mask_decoder.pred_obj_score_head.proj_in.{p}"),
    R(O + "sam_mask_decoder.pred_obj_score_head.layers.1.{p}", G + "mask_decoder.pred_obj_score_head.layers.0.{p}"),
    R(O + "sam_mask_decoder.pred_obj_score_head.layers.2.{p}", G + "mask_decoder.pred_obj_score_head.proj_out.{p}"),
]

_VIDEO = "SAM2 video memory (tracking across frames); single-image inference never reads it"
SAM2_IGNORED = [
    R(O + "memory_attention.{r}", kind="ignore", note=_VIDEO),
    R(O + "memory_encoder.{r}", kind="ignore", note=_VIDEO),
    R(O + "maskmem_tpos_enc", kind="ignore", note=_VIDEO),
    R(O + "no_mem_pos_enc", kind="ignore", note=_VIDEO),
    R(O + "no_obj_ptr", kind="ignore", note=_VIDEO),
    R(O + "obj_ptr_proj.{r}", kind="ignore", note=_VIDEO),
    R(O + "mask_downsample.{p}", kind="ignore", note=_VIDEO),
]


def rules_for(llm_arch: str) -> list[Rule]:
    lm = INTERNLM2_RULES if llm_arch == "InternLM2ForCausalLM" else QWEN2_RULES
    return [*VISION_RULES, *PROJECTOR_RULES, *TEXT_FCS_RULES, *SAM2_RULES, *SAM2_IGNORED, *lm]


# ----------------------------------------------------------------------------------------------
# Tensor transforms


def split_wqkv(w: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    """InternLM2 `wqkv` rows are grouped per key/value head: [q_0 .. q_{g-1}, k, v] x num_kv_heads."""
    groups = num_heads // num_kv_heads
    rest = w.shape[1:]
    v = w.reshape(num_kv_heads, groups + 2, head_dim, *rest)
    q = v[:, :groups].reshape(num_heads * head_dim, *rest)
    k = v[:, groups].reshape(num_kv_heads * head_dim, *rest)
    vv = v[:, groups + 1].reshape(num_kv_heads * head_dim, *rest)
    return q.contiguous(), k.contiguous(), vv.contiguous()


def fuse_wqkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, num_kv_heads: int, head_dim: int):
    groups = num_heads // num_kv_heads
    rest = q.shape[1:]
    qv = q.reshape(num_kv_heads, groups, head_dim, *rest)
    kv = k.reshape(num_kv_heads, 1, head_dim, *rest)
    vv = v.reshape(num_kv_heads, 1, head_dim, *rest)
    return torch.cat([qv, kv, vv], dim=1).reshape(-1, *rest).contiguous()


@dataclass
class LMShape:
    num_heads: int
    num_kv_heads: int
    head_dim: int


# ----------------------------------------------------------------------------------------------
# Plans


@dataclass
class Op:
    kind: str
    sources: list[str]  # official keys
    targets: list[str]  # our keys
    rule: Rule

    def apply(self, tensors: list[torch.Tensor], lm: LMShape | None) -> list[torch.Tensor]:
        if self.kind == "rename":
            return [tensors[0]]
        if self.kind == "copy":
            return [tensors[0]] * len(self.targets)
        if self.kind == "qkv3":
            return [t.contiguous() for t in torch.chunk(tensors[0], 3, dim=0)]
        if self.kind == "wqkv":
            assert lm is not None
            return list(split_wqkv(tensors[0], lm.num_heads, lm.num_kv_heads, lm.head_dim))
        if self.kind == "stack":
            return [torch.cat([t.reshape(1, -1) for t in tensors], dim=0)]
        raise ValueError(self.kind)


@dataclass
class Plan:
    ops: list[Op] = field(default_factory=list)
    ignored: dict[str, str] = field(default_factory=dict)  # official key -> reason
    unexpected: list[str] = field(default_factory=list)  # official keys no rule takes
    duplicates: list[str] = field(default_factory=list)  # our keys filled twice

    def targets(self) -> set[str]:
        return {t for op in self.ops for t in op.targets}


def plan_official_to_ours(official_keys: Iterable[str], llm_arch: str) -> Plan:
    rules = rules_for(llm_arch)
    plan = Plan()
    stacks: dict[str, list[tuple[int, str, Rule]]] = {}
    seen: dict[str, str] = {}
    for key in sorted(official_keys):
        for rule in rules:
            m = rule._off_re.match(key)  # type: ignore[attr-defined]
            if not m:
                continue
            if rule.kind == "ignore":
                plan.ignored[key] = rule.note
                break
            targets = [t.format(**m.groupdict()) for t in rule.ours]
            if rule.kind == "stack":
                stacks.setdefault(targets[0], []).append((int(m.group("j")), key, rule))
            else:
                plan.ops.append(Op(rule.kind, [key], targets, rule))
            break
        else:
            plan.unexpected.append(key)
    for target, rows in stacks.items():
        rows.sort()
        plan.ops.append(Op("stack", [k for _, k, _ in rows], [target], rows[0][2]))
    for op in plan.ops:
        for t in op.targets:
            if t in seen:
                plan.duplicates.append(t)
            seen[t] = op.sources[0]
    return plan


def ours_to_official(
    ours: Mapping[str, torch.Tensor], llm_arch: str, lm: LMShape | None, tied: bool = False
) -> dict[str, torch.Tensor]:
    """Our state dict -> official key layout (inverse of the table). Raises KeyError on an unmapped key."""
    rules = [r for r in rules_for(llm_arch) if r.kind != "ignore"]
    out: dict[str, torch.Tensor] = {}
    pending: dict[tuple[int, str], dict[int, torch.Tensor]] = {}
    for key, value in ours.items():
        if tied and key == "language_model.lm_head.weight":
            continue
        for ri, rule in enumerate(rules):
            hit = None
            for ti, rx in enumerate(rule._our_res):  # type: ignore[attr-defined]
                m = rx.match(key)
                if m:
                    hit = (ti, m)
                    break
            if hit is None:
                continue
            ti, m = hit
            if rule.kind == "rename":
                out[rule.official.format(**m.groupdict())] = value
            elif rule.kind == "copy":
                first = rule.ours[0].format(**m.groupdict())
                if ti == 0:
                    out[rule.official.format(**m.groupdict())] = value
                elif first in ours and not torch.equal(ours[first], value):
                    raise KeyError(f"{key} differs from {first}; the official layout stores them as one tensor")
            elif rule.kind == "stack":
                for j in range(value.shape[0]):
                    out[rule.official.format(j=j, **m.groupdict())] = value[j : j + 1].clone()
            else:  # qkv3 / wqkv: collect the three parts
                name = rule.official.format(**m.groupdict())
                pending.setdefault((ri, name), {})[ti] = value
            break
        else:
            raise KeyError(f"no official name for {key}")
    for (ri, name), parts in pending.items():
        rule = rules[ri]
        if len(parts) != 3:
            raise KeyError(f"{name}: only {len(parts)} of q/k/v present")
        q, k, v = parts[0], parts[1], parts[2]
        if rule.kind == "qkv3":
            out[name] = torch.cat([q, k, v], dim=0).contiguous()
        else:
            assert lm is not None
            out[name] = fuse_wqkv(q, k, v, lm.num_heads, lm.num_kv_heads, lm.head_dim)
    return out


def lm_shape(text_config) -> LMShape:
    heads = int(text_config.num_attention_heads)
    kv = int(getattr(text_config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text_config, "head_dim", None) or text_config.hidden_size // heads)
    return LMShape(heads, kv, head_dim)
