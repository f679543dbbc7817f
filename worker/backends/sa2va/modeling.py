"""Sa2VA on transformers 5 building blocks, without remote code.

    vision_tower            InternVLVisionModel (InternViT)
    multi_modal_projector   InternVLMultiModalProjector (the official `mlp1`)
    language_model          Qwen2ForCausalLM, or LlamaForCausalLM for InternLM2 (q/k/v split from wqkv)
    text_hidden_fcs         Linear(C, C) -> ReLU -> Linear(C, 256) -> Dropout(0)
    grounding_encoder       Sam2Model (image encoder, prompt encoder, mask decoder)

Every method moves its inputs to the device of the module that consumes them (no `.cuda()`), so the
model runs on one device or split over several by an accelerate device map.
"""

from __future__ import annotations

import functools
import inspect
import types
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sa2va_queue.core.exceptions import ModelError

from . import hiera
from .config import Sa2VAConfig

NO_SPLIT_MODULES = ["InternVLVisionLayer", "Qwen2DecoderLayer", "LlamaDecoderLayer", "Sam2Model"]


def module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def module_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


class Sa2VAForSegmentation(nn.Module):
    def __init__(self, config: Sa2VAConfig):
        super().__init__()
        from transformers import (
            InternVLConfig,
            InternVLVisionModel,
            LlamaForCausalLM,
            Qwen2ForCausalLM,
            Sam2Model,
        )
        from transformers.models.internvl.modeling_internvl import InternVLMultiModalProjector

        self.config = config
        self.vision_tower = InternVLVisionModel(config.vision)
        pconf = InternVLConfig(
            vision_config=config.vision.to_dict(),
            text_config=config.text.to_dict(),
            downsample_ratio=config.downsample_ratio,
            projector_hidden_act="gelu",
        )
        self.multi_modal_projector = InternVLMultiModalProjector(pconf)
        lm_cls = Qwen2ForCausalLM if config.llm_arch == "Qwen2ForCausalLM" else LlamaForCausalLM
        self.language_model = lm_cls(config.text)
        c = config.text.hidden_size
        self.text_hidden_fcs = nn.Sequential(
            nn.Linear(c, c), nn.ReLU(inplace=True), nn.Linear(c, config.sam_hidden), nn.Dropout(0.0)
        )
        self.grounding_encoder = Sam2Model(config.sam2)
        use_fused_hiera_attention(self.grounding_encoder)

    # ------------------------------------------------------------------ vision
    def pixel_shuffle(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        """ps_version 'v2': (n, w, h, c) -> (n, w*s, h*s, c/s^2), height and width swapped back."""
        n, w, h, c = x.shape
        x = x.reshape(n, w, int(h * scale), int(c / scale))
        x = x.permute(0, 2, 1, 3).contiguous()
        x = x.reshape(n, int(h * scale), int(w * scale), int(c / (scale * scale)))
        return x.permute(0, 2, 1, 3).contiguous()

    def extract_feature(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(n_tiles, 3, T, T) -> (n_tiles, tokens per tile, C_llm), on the projector's device."""
        vt = self.vision_tower
        pixel_values = pixel_values.to(module_device(vt), module_dtype(vt))
        embeds = vt(pixel_values=pixel_values).last_hidden_state[:, 1:, :]
        side = int(round(embeds.shape[1] ** 0.5))
        embeds = embeds.reshape(embeds.shape[0], side, side, -1)
        embeds = self.pixel_shuffle(embeds, self.config.downsample_ratio)
        embeds = embeds.reshape(embeds.shape[0], -1, embeds.shape[-1])
        proj = self.multi_modal_projector
        return proj(embeds.to(module_device(proj), module_dtype(proj)))

    # ------------------------------------------------------------------ language
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        emb = self.language_model.get_input_embeddings()
        return emb(ids.to(emb.weight.device))

    def _lm_step(self, inputs_embeds, attention_mask, position_ids, past):
        # transformers renamed `past_key_values` to `cache` during 5.x; accept either release.
        lm = self.language_model.model
        key = _cache_kwarg(type(lm))
        out = lm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **{key: past},
        )
        return out.last_hidden_state, getattr(out, "cache", None) or out.past_key_values

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        head = self.language_model.get_output_embeddings()
        return head(hidden.to(head.weight.device)).float()

    def _prompt_embeds(self, input_ids: list[list[int]], image_embeds: list[torch.Tensor], img_context_id: int,
                       pad_id: int):
        """Left-padded prompt embeddings with the image embeddings scattered in, the attention mask and
        the position ids (mask and positions on the host)."""
        bsz = len(input_ids)
        length = max(len(x) for x in input_ids)
        ids = torch.full((bsz, length), pad_id, dtype=torch.long)
        mask = torch.zeros((bsz, length), dtype=torch.long)
        for b, seq in enumerate(input_ids):
            ids[b, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[b, length - len(seq) :] = 1
        embeds = self._embed(ids)
        dev = embeds.device
        # positions of the image-context tokens found on the host: no device sync in the batch
        selected = (ids == img_context_id).reshape(-1).nonzero().squeeze(1)
        vit = torch.cat([e.reshape(-1, e.shape[-1]) for e in image_embeds], dim=0) if image_embeds else None
        n_sel = int(selected.numel())
        if vit is None and n_sel or vit is not None and n_sel != vit.shape[0]:
            raise ModelError(f"{n_sel} image-context tokens in the prompt but {0 if vit is None else vit.shape[0]} image embeddings")
        if vit is not None:
            flat = embeds.reshape(-1, embeds.shape[-1])
            embeds = flat.index_copy(0, selected.to(dev), vit.to(dev, embeds.dtype)).reshape(embeds.shape)
        position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
        return embeds, mask, position_ids

    @torch.no_grad()
    def generate(
        self,
        input_ids: list[list[int]],
        image_embeds: list[torch.Tensor],
        *,
        img_context_id: int,
        seg_id: int,
        pad_id: int,
        stop_ids: set[int],
        max_new_tokens: int,
        forced: list[list[int]] | None = None,
        draft: list[int] | None = None,
        one_pass: bool = True,
    ) -> "GenerationOutput":
        """Left-padded batched greedy decoding (or scripted tokens when `forced` is given).

        Returns per sample the generated tokens (stop token included) and the last-layer hidden state
        at every position whose *input* token is a generated [SEG] (the official selection).

        Scripted tokens are all known in advance: prompt and answer go through the language model in
        one forward (no KV cache, no decode steps). `draft` (e.g. the trained answer `Sure, [SEG].`)
        is checked the same way: one forward over prompt + draft, and a sample whose greedy choice
        equals the draft at every position has exactly the greedy answer (speculative decoding with a
        fixed draft). Samples that leave the draft are decoded step by step as without one.
        `one_pass=False`: scripted tokens fed step by step too (the official computation, KV-cached
        decoding; slower, other bf16 roundings than one forward).
        """
        if not one_pass:
            return self._step_generate(input_ids, image_embeds, img_context_id, seg_id, pad_id, stop_ids,
                                       max_new_tokens, forced)
        if forced is not None:
            answers = [_truncate(f, stop_ids, max_new_tokens) for f in forced]
            fed = [_fed(a, stop_ids, max_new_tokens) for a in answers]
            return self._one_pass(input_ids, image_embeds, answers, fed, img_context_id, seg_id, pad_id)[0]
        if draft:
            answer = _truncate(draft, stop_ids, max_new_tokens)
            # a draft decides the whole answer only if it ends where decoding would stop
            if answer and (answer[-1] in stop_ids or len(answer) == max_new_tokens):
                out, greedy = self._one_pass(input_ids, image_embeds, [answer] * len(input_ids),
                                             [answer[:-1]] * len(input_ids), img_context_id, seg_id, pad_id,
                                             verify=True)
                rejected = [b for b, g in enumerate(greedy) if g != answer]
                if rejected:
                    rest = self._step_generate([input_ids[b] for b in rejected], [image_embeds[b] for b in rejected],
                                               img_context_id, seg_id, pad_id, stop_ids, max_new_tokens)
                    for j, b in enumerate(rejected):
                        out.tokens[b], out.seg_hidden[b] = rest.tokens[j], rest.seg_hidden[j]
                return out
        return self._step_generate(input_ids, image_embeds, img_context_id, seg_id, pad_id, stop_ids, max_new_tokens)

    def _one_pass(self, input_ids, image_embeds, answers: list[list[int]], fed: list[list[int]], img_context_id: int,
                  seg_id: int, pad_id: int, verify: bool = False) -> tuple["GenerationOutput", list[list[int]] | None]:
        """Prompt + the `fed` answer tokens (those step-by-step decoding would feed back, see _fed) in
        one forward. With `verify`, also the greedy token at each answer position (one host copy for
        the batch)."""
        bsz = len(input_ids)
        embeds, mask, position_ids = self._prompt_embeds(input_ids, image_embeds, img_context_id, pad_id)
        length = embeds.shape[1]
        n = max(len(f) for f in fed)
        if n:
            # shorter answers padded on the right: causal attention keeps padding out of earlier positions
            feed = torch.tensor([f + [pad_id] * (n - len(f)) for f in fed], dtype=torch.long)
            embeds = torch.cat([embeds, self._embed(feed).to(embeds.device, embeds.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones((bsz, n))], dim=1)
            position_ids = torch.cat([position_ids, position_ids[:, -1:] + 1 + torch.arange(n)], dim=1)
        dev = embeds.device
        hidden = self._lm_forward(embeds, mask.to(dev), position_ids.to(dev))
        out = GenerationOutput(tokens=[list(a) for a in answers], seg_hidden=[[] for _ in range(bsz)])
        rows = [(b, length + j) for b, f in enumerate(fed) for j, t in enumerate(f) if t == seg_id]
        if rows:
            picked = hidden[torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows])]
            for (b, _), h in zip(rows, picked):
                out.seg_hidden[b].append(h)
        greedy = None
        if verify:
            width = max(len(a) for a in answers)
            g = self._logits(hidden[:, length - 1 : length - 1 + width, :]).argmax(-1).tolist()
            greedy = [g[b][: len(a)] for b, a in enumerate(answers)]
        return out, greedy

    def _lm_forward(self, inputs_embeds, attention_mask, position_ids) -> torch.Tensor:
        """Last-layer hidden states of the whole sequence, without a KV cache."""
        lm = self.language_model.model
        out = lm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                 use_cache=False)
        return out.last_hidden_state

    def _step_generate(self, input_ids, image_embeds, img_context_id: int, seg_id: int, pad_id: int,
                       stop_ids: set[int], max_new_tokens: int, forced: list[list[int]] | None = None
                       ) -> "GenerationOutput":
        """Greedy (or scripted) decoding, one KV-cached step per token (one host sync per step)."""
        bsz = len(input_ids)
        embeds, mask, position_ids = self._prompt_embeds(input_ids, image_embeds, img_context_id, pad_id)
        dev = embeds.device
        mask = mask.to(dev)
        hidden, past = self._lm_step(embeds, mask, position_ids.to(dev), None)
        logits = self._logits(hidden[:, -1, :])
        out = GenerationOutput(tokens=[[] for _ in range(bsz)], seg_hidden=[[] for _ in range(bsz)])
        done = [False] * bsz
        next_pos = position_ids[:, -1] + 1
        for step in range(max_new_tokens):
            greedy = logits.argmax(-1).tolist()
            chosen = []
            for b in range(bsz):
                if done[b]:
                    chosen.append(pad_id)
                    continue
                if forced is not None:
                    tok = forced[b][step] if step < len(forced[b]) else None
                    if tok is None:  # script exhausted without a stop token
                        done[b] = True
                        chosen.append(pad_id)
                        continue
                else:
                    tok = int(greedy[b])
                out.tokens[b].append(tok)
                if tok in stop_ids:
                    done[b] = True
                chosen.append(tok)
            if all(done) or step == max_new_tokens - 1:
                break
            feed = torch.tensor(chosen, dtype=torch.long).unsqueeze(1)
            mask = torch.cat([mask, mask.new_ones((bsz, 1))], dim=1)
            emb = self._embed(feed)
            hidden, past = self._lm_step(emb, mask, next_pos.unsqueeze(1).to(emb.device), past)
            next_pos = next_pos + 1
            h = hidden[:, -1, :]
            for b in range(bsz):
                # a sample fed its generated [SEG] this step: the output here is the [SEG] hidden state
                if chosen[b] == seg_id:
                    out.seg_hidden[b].append(h[b])
            logits = self._logits(h)
        return out

    # ------------------------------------------------------------------ SAM2
    def sam_image_features(self, sam_pixel_values: torch.Tensor, features_fn=None,
                           window_major: bool = False) -> list[torch.Tensor]:
        """(B, 3, S, S) -> [high-res s0, high-res s1, image embedding (+ no-memory embedding)] as (B, C, h, w).

        `features_fn(grounding_encoder, x)`: another implementation of `sam_features` (the pipeline's
        compiled one on CUDA). `window_major`: sam_features' trunk order when none is given."""
        ge = self.grounding_encoder
        dev, dt = module_device(ge), module_dtype(ge)
        x = sam_pixel_values.to(dev, dt)
        if features_fn is not None:
            if x.shape[0] > 1:
                import torch._dynamo

                torch._dynamo.maybe_mark_dynamic(x, 0)  # a compiled features_fn: one graph for every batch > 1
            return list(features_fn(ge, x))
        if has_hiera_layout(ge):
            return list(sam_features(ge, x, window_major=window_major))
        bsz = x.shape[0]
        feats = list(ge.get_image_features(x).fpn_hidden_states)  # each (h*w, B, C)
        feats[-1] = feats[-1] + ge.no_memory_embedding
        sizes = [(x.shape[-2] // s, x.shape[-1] // s) for s in (4, 8, 16)]
        return [f.permute(1, 2, 0).reshape(bsz, -1, *hw) for f, hw in zip(feats, sizes)]

    def sam_decode(self, feats: list[torch.Tensor], image_index: torch.Tensor, language: torch.Tensor) -> torch.Tensor:
        """One mask per (image, [SEG]) pair -> low-res logits (M, h, w) float32 (best predicted IoU of 3)."""
        ge = self.grounding_encoder
        dev, dt = module_device(ge), module_dtype(ge)
        idx = image_index.to(dev)
        emb = [f.index_select(0, idx) for f in feats]
        m = idx.shape[0]
        points = torch.zeros(m, 1, 1, 2, device=dev, dtype=dt)
        labels = -torch.ones(m, 1, 1, device=dev, dtype=torch.int32)
        sparse, dense = ge.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None, input_masks=None)
        lang = language.to(dev, sparse.dtype).reshape(m, 1, 1, -1)
        sparse = torch.cat([sparse, lang], dim=2)  # (M, 1, 2 + 1, C): no-point pair + language token
        pe = ge.get_image_wide_positional_embeddings().repeat(m, 1, 1, 1)
        masks, iou, _, _ = ge.mask_decoder(
            image_embeddings=emb[-1],
            image_positional_embeddings=pe.to(dt),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
            high_resolution_features=emb[:-1],
        )
        best = iou[:, 0, :].argmax(-1)
        return masks[torch.arange(m, device=masks.device), 0, best].float()

    def language_embeddings(self, seg_hidden: torch.Tensor) -> torch.Tensor:
        fcs = self.text_hidden_fcs
        return fcs(seg_hidden.to(module_device(fcs), module_dtype(fcs)))


_HIERA_ATTRIBUTES = ("qkv", "proj", "num_attention_heads", "query_stride", "scale")


def _hiera_attention(self, hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
    """Sam2MultiScaleAttention.forward as the official Hiera block computes it: q/k/v, optional
    query max-pooling, one fused scaled_dot_product_attention. (transformers' forward also builds
    an unused fp32 per-token (heads x heads) score tensor with a softmax on it, in every block.)"""
    b, h, w, _ = hidden_states.shape
    qkv = self.qkv(hidden_states).reshape(b, h * w, 3, self.num_attention_heads, -1)
    query, key, value = torch.unbind(qkv, 2)
    if self.query_stride:
        q = query.reshape(b, h, w, -1).permute(0, 3, 1, 2)
        q = F.max_pool2d(q, kernel_size=self.query_stride, stride=self.query_stride, ceil_mode=False)
        h, w = q.shape[-2:]
        query = q.permute(0, 2, 3, 1).reshape(b, h * w, self.num_attention_heads, -1)
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), scale=self.scale
    )
    return self.proj(out.transpose(1, 2).reshape(b, h, w, -1))


def use_fused_hiera_attention(sam: nn.Module) -> int:
    """Give every Hiera attention block of `sam` the fused forward above; returns how many."""
    n = 0
    for mod in sam.modules():
        if type(mod).__name__ == "Sam2MultiScaleAttention" and all(hasattr(mod, a) for a in _HIERA_ATTRIBUTES):
            mod.forward = types.MethodType(_hiera_attention, mod)
            n += 1
    return n


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm / Qwen2RMSNorm.forward as a function (compiled: one pass instead of six)."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The gated MLP's act_fn(gate_proj(x)) * up_proj(x) with SiLU (compiled: one pass instead of two)."""
    return F.silu(gate) * up


_NORMS = ("LlamaRMSNorm", "Qwen2RMSNorm")
_MLPS = ("LlamaMLP", "Qwen2MLP")


# Fewer rows (tokens of the batch) than this take the library's forward: at batch 1 the step is
# bound by the host, where the compiled function's guards cost more than its fused kernel saves.
FUSED_MIN_ROWS = 2048


def _norm_forward(self, x):
    if x.numel() < FUSED_MIN_ROWS * x.shape[-1]:
        return type(self).forward(self, x)
    return self._fused_ops["rms_norm"](x, self.weight, self.variance_epsilon)


def _mlp_forward(self, x):
    if x.numel() < FUSED_MIN_ROWS * x.shape[-1]:
        return type(self).forward(self, x)
    return self.down_proj(self._fused_ops["silu_mul"](self.gate_proj(x), self.up_proj(x)))


def use_fused_lm_ops(lm: nn.Module, ops: dict | None) -> int:
    """Route the language model's RMSNorms and SiLU-gated MLPs through `ops` ({"rms_norm": fn,
    "silu_mul": fn}, e.g. compiled versions of the functions above); None restores the library's
    forwards. Returns how many modules were changed."""
    n = 0
    for mod in lm.modules():
        name = type(mod).__name__
        norm = name in _NORMS and hasattr(mod, "variance_epsilon")
        act = type(getattr(mod, "act_fn", None)).__name__
        mlp = name in _MLPS and act in ("SiLU", "SiLUActivation")  # torch's or transformers' F.silu module
        if not (norm or mlp):
            continue
        if ops is None:
            mod.__dict__.pop("forward", None)
            mod.__dict__.pop("_fused_ops", None)
        else:
            mod.__dict__["_fused_ops"] = ops  # not a submodule or buffer: the state dict stays as it is
            mod.forward = types.MethodType(_norm_forward if norm else _mlp_forward, mod)
        n += 1
    return n


_HIERA_LAYOUT = {
    "vision_encoder": ("backbone", "neck", "num_feature_levels"),
    "vision_encoder.backbone": ("patch_embed", "_get_pos_embed", "blocks", "stage_ends"),
    "vision_encoder.neck": ("convs", "fpn_top_down_levels"),
    "mask_decoder": ("conv_s0", "conv_s1"),
    "": ("no_memory_embedding",),
}


def has_hiera_layout(sam: nn.Module) -> bool:
    """Whether `sam` (a transformers Sam2Model) has the submodules sam_features walks through."""
    for path, attrs in _HIERA_LAYOUT.items():
        mod = sam.get_submodule(path) if path else sam
        if not all(hasattr(mod, a) for a in attrs):
            return False
    return True


def sam_features(sam: nn.Module, x: torch.Tensor, window_major: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sam2Model.get_image_features for Sa2VA, as plain tensor code (one graph for torch.compile):
    Hiera trunk, FPN neck, the mask decoder's conv_s0/conv_s1 on the two high-resolution levels, the
    no-memory embedding added to the image embedding. The same ops in the same order as transformers'
    path, less what Sa2VA never reads (the neck's sine position encodings of every level, per image,
    and the feature maps' (h*w, B, C) copies). Returns (B, C, h, w) tensors, high resolution first.
    `window_major`: the trunk as hiera.trunk_stages computes it (same values, fewer copies), where
    the input's size allows."""
    enc = sam.vision_encoder
    trunk = enc.backbone
    h = trunk.patch_embed(x)
    h = h + trunk._get_pos_embed(h.shape[1:3])
    if window_major and hiera.fits_window_major(trunk, *h.shape[1:3]):
        stages = hiera.trunk_stages(trunk, h)
    else:
        stages = []
        for i, block in enumerate(trunk.blocks):
            h = block(h)
            if i in trunk.stage_ends:
                stages.append(h)
    neck = enc.neck
    n = len(neck.convs) - 1
    fpn = []
    prev = None
    for i in range(n, -1, -1):  # top-down, low to high resolution, as Sam2VisionNeck.forward
        lateral = neck.convs[n - i](stages[i].permute(0, 3, 1, 2).to(neck.convs[i].weight.dtype))
        if i not in neck.fpn_top_down_levels or i == n:
            prev = lateral
        else:
            top_down = F.interpolate(prev.to(torch.float32), scale_factor=2.0, mode="nearest").to(lateral.dtype)
            prev = lateral + top_down
        fpn.append(prev)
    s0, s1, emb = fpn[-enc.num_feature_levels :][::-1]
    dec = sam.mask_decoder
    emb = emb + sam.no_memory_embedding.reshape(1, -1, 1, 1)
    return dec.conv_s0(s0), dec.conv_s1(s1), emb


@dataclass
class GenerationOutput:
    tokens: list[list[int]]
    seg_hidden: list[list[torch.Tensor]] = field(default_factory=list)


def upsample_probability(low_res: torch.Tensor, sam_size: int, size: tuple[int, int]) -> torch.Tensor:
    """low-res logits (h, w) or (M, h, w) -> S x S -> (H, W) or (M, H, W), bilinear both times (as the
    official video predictor + predict_forward); each map on its own, so a stack gives the same values."""
    single = low_res.dim() == 2
    x = low_res.float().reshape(-1, 1, *low_res.shape[-2:])
    x = F.interpolate(x, size=(sam_size, sam_size), mode="bilinear", align_corners=False)
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    x = x[:, 0].sigmoid()
    return x[0] if single else x


def _truncate(tokens: list[int], stop_ids: set[int], max_new_tokens: int) -> list[int]:
    """What greedy decoding would emit if it chose `tokens`: up to the first stop token (kept) and at
    most `max_new_tokens`."""
    out = []
    for t in tokens[:max_new_tokens]:
        out.append(int(t))
        if t in stop_ids:
            break
    return out


def _fed(answer: list[int], stop_ids: set[int], max_new_tokens: int) -> list[int]:
    """The tokens of a (truncated) answer that step-by-step decoding feeds back: all but the last when
    decoding stops on it (a stop token, or the length limit), else all (a script that ran out)."""
    if answer and (answer[-1] in stop_ids or len(answer) >= max_new_tokens):
        return answer[:-1]
    return list(answer)


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
