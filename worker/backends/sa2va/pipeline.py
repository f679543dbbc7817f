"""Batched Sa2VA inference: what `predict_forward` does for one image, done for a batch at once.

    prepare(image, prompt)  host: checked uint8 pixels, tile grid, cached token ids (processing.py)
    run(batch)              tiles and SAM2 inputs made from the uint8 pixels on the model's device
                            (pixels.py; the PIL path on a CPU model), equal to the PIL path,
                            tiles of all images through the vision tower together,
                            left-padded batched greedy generation (or a scripted answer),
                            [SEG] hidden states -> text_hidden_fcs,
                            SAM2 image encoder once per image, one batched mask-decoder call
                            for every (image, [SEG]) pair, each mask at its own image size
                            (upsampled together per size, one host copy per size).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np
import torch

from sa2va_queue.core.exceptions import ConfigError

from . import pixels
from .config import IMG_CONTEXT_TOKEN, MAX_NEW_TOKENS, MAX_TILES, SEG_TOKEN, USE_THUMBNAIL, Sa2VAConfig
from .modeling import Sa2VAForSegmentation, module_device, upsample_probability
from .processing import PreparedInput, check_tokenizer, prepare, prompt_ids

T = TypeVar("T")


def _groups(items: Sequence[T], key: Callable[[T], Hashable]) -> list[list[int]]:
    """Indices of `items` grouped by `key`, groups in order of first appearance."""
    out: dict[Hashable, list[int]] = {}
    for i, item in enumerate(items):
        out.setdefault(key(item), []).append(i)
    return list(out.values())


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
        self._uploads: dict | None = None  # uint8 uploads shared by the tiles and SAM2 within one run()
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
        # None: torch resizes (pixels.py) on a GPU model, the PIL path on a CPU one (faster there)
        self.pixels_on_device: bool | None = None
        self._ids_cache: dict[tuple[str, int], list[int]] = {}
        self._ids_lock = threading.Lock()

    def _script(self, answer: str) -> list[int]:
        ids = list(self.tokenizer.encode(answer, add_special_tokens=False))
        end = self.tokenizer.convert_tokens_to_ids(self.config.stop_words[0])
        return ids + [int(end)]

    # ------------------------------------------------------------------
    def prepare(self, image: np.ndarray, prompt: str) -> PreparedInput:
        return prepare(self.config, self.tokenizer, image, prompt, self.max_tiles, ids=self._prompt_ids)

    def _prompt_ids(self, config, tokenizer, prompt: str, n_tiles: int) -> list[int]:
        # Every job of a run has the same prompt and (same-size frames) the same tile count: encode
        # once. The lock also keeps job threads off the fast tokenizer at the same time.
        key = (prompt, n_tiles)
        with self._ids_lock:
            ids = self._ids_cache.get(key)
            if ids is None:
                ids = prompt_ids(config, tokenizer, prompt, n_tiles)
                if len(self._ids_cache) < 256:
                    self._ids_cache[key] = ids
        return list(ids)

    def _on_device(self, device: torch.device) -> bool:
        return self.pixels_on_device if self.pixels_on_device is not None else device.type != "cpu"

    def _upload(self, batch: Sequence[PreparedInput], rows: list[int], device: torch.device) -> torch.Tensor:
        """uint8 pixels of batch[rows] on `device`, uploaded once per batch and device."""
        if self._uploads is None:  # outside run(): nothing to share
            return pixels.to_device([batch[i].image for i in rows], device)
        key = (tuple(id(batch[i]) for i in rows), str(device))
        if key not in self._uploads:
            self._uploads[key] = pixels.to_device([batch[i].image for i in rows], device)
        return self._uploads[key]

    def _tiles(self, batch: Sequence[PreparedInput], device: torch.device) -> list[torch.Tensor]:
        """Normalised tiles per image, made on `device` (GPU) or by the PIL path (CPU)."""
        if not self._on_device(device):
            return [b.pixel_values for b in batch]
        out: list[torch.Tensor | None] = [None] * len(batch)
        for rows in _groups(batch, lambda b: (b.size, b.grid)):
            x = self._upload(batch, rows, device)
            t = pixels.tiles(x, batch[rows[0]].grid, self.config.tile_size, USE_THUMBNAIL)
            for j, chunk in enumerate(t.split(batch[rows[0]].n_tiles)):
                out[rows[j]] = chunk
        return out  # type: ignore[return-value]

    def _sam_input(self, batch: Sequence[PreparedInput], device: torch.device) -> torch.Tensor:
        if not self._on_device(device):
            return torch.stack([b.sam_pixel_values for b in batch])
        s = self.config.sam_image_size
        groups = _groups(batch, lambda b: b.size)
        if len(groups) == 1:  # frames of one size: the usual case
            return pixels.sam_input(self._upload(batch, groups[0], device), s)
        out = torch.empty((len(batch), 3, s, s), dtype=torch.float32, device=device)
        for rows in groups:
            x = self._upload(batch, rows, device)
            out[torch.tensor(rows, device=device)] = pixels.sam_input(x, s)
        return out

    @torch.no_grad()
    def run(self, batch: Sequence[PreparedInput]) -> list[Sa2VAOutput]:
        if not batch:
            return []
        self._uploads = {}
        try:
            return self._run(batch)
        finally:
            self._uploads = None

    def _run(self, batch: Sequence[PreparedInput]) -> list[Sa2VAOutput]:
        m = self.model
        per_tile = self._tiles(batch, module_device(m.vision_tower))
        vit = m.extract_feature(torch.cat(per_tile, dim=0))
        per_image = list(vit.split([t.shape[0] for t in per_tile]))
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
        seg_batch = batch if len(images_with_seg) == len(batch) else [batch[i] for i in images_with_seg]
        sam_in = self._sam_input(seg_batch, module_device(m.grounding_encoder))
        lang = m.language_embeddings(torch.stack([h.to(pairs[0][1].device) for _, h in pairs]))
        with self._sam_precision():
            feats = m.sam_image_features(sam_in)  # once per image, however many [SEG]s it has
            row = {img: r for r, img in enumerate(images_with_seg)}
            index = torch.tensor([row[i] for i, _ in pairs], dtype=torch.long)
            low = m.sam_decode(feats, index, lang).float()
        # upsampled per output size together, then one copy to the host per size
        s = self.config.sam_image_size
        for rows in _groups(pairs, lambda p: batch[p[0]].size):
            size = batch[pairs[rows[0]][0]].size
            idx = torch.tensor(rows, device=low.device)
            probs = pixels.to_host(upsample_probability(low.index_select(0, idx), s, size))
            for j, r in enumerate(rows):
                outputs[pairs[r][0]].probabilities.append(probs[j])
        return outputs

    def _sam_precision(self):
        """bf16 autocast on CUDA for all of SAM2, as the official code. Plain bf16 (`sam_autocast=0`)
        runs the image encoder 18 % faster on an H200 but is not the same computation: autocast's
        fp32 layer norms and casts change bf16 roundings (features up to 0.16 apart on ~100)."""
        p = next(self.model.grounding_encoder.parameters())
        if self.sam_autocast and p.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def segment(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[Sa2VAOutput]:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        return self.run([self.prepare(img, p) for img, p in zip(images, prompts)])
