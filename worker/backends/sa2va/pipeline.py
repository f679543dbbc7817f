"""Batched Sa2VA inference: what `predict_forward` does for one image, done for a batch at once.

    prepare(image, prompt)  CPU: tiles, SAM2 image, token ids              (processing.py)
    run(batch)              tiles of all images through the vision tower together,
                            left-padded batched greedy generation (or a scripted answer),
                            [SEG] hidden states -> text_hidden_fcs,
                            SAM2 image encoder once per image, one batched mask-decoder call
                            for every (image, [SEG]) pair, each mask at its own image size.
"""

from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from sa2va_queue.core.exceptions import ConfigError

from .config import IMG_CONTEXT_TOKEN, MAX_NEW_TOKENS, MAX_TILES, SEG_TOKEN, Sa2VAConfig
from .modeling import Sa2VAForSegmentation, upsample_probability
from .processing import PreparedInput, check_tokenizer, prepare


@dataclass
class Sa2VAOutput:
    text: str
    tokens: list[int]
    probabilities: list[np.ndarray] = field(default_factory=list)  # float32 (H, W), one per [SEG]

    @property
    def n_seg(self) -> int:
        return len(self.probabilities)


class Sa2VAPipeline:
    def __init__(
        self,
        model: Sa2VAForSegmentation,
        tokenizer,
        config: Sa2VAConfig | None = None,
        *,
        max_new_tokens: int = MAX_NEW_TOKENS,
        max_tiles: int = MAX_TILES,
        force_answer: str | None = None,
        sam_autocast: bool = True,
    ) -> None:
        self.model = model
        # The official predict_forward runs SAM2 (encoder and decoder) under bf16 autocast on CUDA,
        # whatever the model dtype; doing the same keeps masks as the trained model produced them.
        self.sam_autocast = sam_autocast
        self.tokenizer = tokenizer
        self.config = config or model.config
        check_tokenizer(tokenizer, int(self.config.text.vocab_size))
        self.max_new_tokens = int(max_new_tokens)
        self.max_tiles = int(max_tiles)
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not 1 <= self.max_tiles <= 40:
            raise ConfigError(f"max_tiles must be in 1..40, got {max_tiles}")
        self.img_context_id = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
        self.seg_id = tokenizer.convert_tokens_to_ids(SEG_TOKEN)
        stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
        for word in self.config.stop_words:
            tid = tokenizer.convert_tokens_to_ids(word)
            if tid is not None and tid != getattr(tokenizer, "unk_token_id", None):
                stop.add(int(tid))
        self.stop_ids = stop
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.force_answer = force_answer
        self.forced_ids = self._script(force_answer) if force_answer is not None else None

    def _script(self, answer: str) -> list[int]:
        ids = list(self.tokenizer.encode(answer, add_special_tokens=False))
        end = self.tokenizer.convert_tokens_to_ids(self.config.stop_words[0])
        return ids + [int(end)]

    # ------------------------------------------------------------------
    def prepare(self, image: np.ndarray, prompt: str) -> PreparedInput:
        return prepare(self.config, self.tokenizer, image, prompt, self.max_tiles)

    @torch.no_grad()
    def run(self, batch: Sequence[PreparedInput]) -> list[Sa2VAOutput]:
        if not batch:
            return []
        m = self.model
        tiles = torch.cat([b.pixel_values for b in batch], dim=0)
        vit = m.extract_feature(tiles)
        per_image, start = [], 0
        for b in batch:
            n = b.pixel_values.shape[0]
            per_image.append(vit[start : start + n])
            start += n
        gen = m.generate(
            [b.input_ids for b in batch],
            per_image,
            img_context_id=self.img_context_id,
            seg_id=self.seg_id,
            pad_id=self.pad_id,
            stop_ids=self.stop_ids,
            max_new_tokens=self.max_new_tokens,
            forced=[self.forced_ids] * len(batch) if self.forced_ids is not None else None,
        )
        outputs = []
        for i, toks in enumerate(gen.tokens):
            shown = toks[:-1] if toks and toks[-1] in self.stop_ids else toks
            text = self.tokenizer.decode(shown, skip_special_tokens=False).strip()
            outputs.append(Sa2VAOutput(text=text, tokens=list(toks)))
        pairs = [(i, h) for i, hs in enumerate(gen.seg_hidden) for h in hs]
        if not pairs:
            return outputs
        images_with_seg = sorted({i for i, _ in pairs})
        sam_in = torch.stack([batch[i].sam_pixel_values for i in images_with_seg])
        lang = m.language_embeddings(torch.stack([h.to(pairs[0][1].device) for _, h in pairs]))
        with self._sam_precision():
            feats = m.sam_image_features(sam_in)  # once per image, however many [SEG]s it has
            row = {img: r for r, img in enumerate(images_with_seg)}
            index = torch.tensor([row[i] for i, _ in pairs], dtype=torch.long)
            low = m.sam_decode(feats, index, lang).float()
        s = self.config.sam_image_size
        for (i, _), logits in zip(pairs, low):
            prob = upsample_probability(logits, s, batch[i].size)
            outputs[i].probabilities.append(prob.cpu().numpy().astype(np.float32))
        return outputs

    def _sam_precision(self):
        device = next(self.model.grounding_encoder.parameters()).device
        if self.sam_autocast and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[Sa2VAOutput]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return self.run([self.prepare(img, p) for img, p in zip(images, prompts)])
