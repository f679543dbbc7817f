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
    ) -> "GenerationOutput":
        """Left-padded batched greedy decoding (or scripted tokens when `forced` is given).

        Returns per sample the generated tokens (stop token included) and the last-layer hidden state
        at every position whose *input* token is a generated [SEG] (the official selection).
        """
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
    def sam_image_features(self, sam_pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, S, S) -> [high-res s0, high-res s1, image embedding (+ no-memory embedding)] as (B, C, h, w)."""
        ge = self.grounding_encoder
        dev, dt = module_device(ge), module_dtype(ge)
        x = sam_pixel_values.to(dev, dt)
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


@functools.lru_cache(maxsize=None)
def _cache_kwarg(cls: type) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"
