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

Fast paths (bench/gpu/fast_paths.py measures each):
    one pass        a scripted answer, or the draft `Sure, [SEG].` that greedy decoding confirms,
                    goes through the language model in one forward with the prompt instead of one
                    KV-cached step per token (modeling.generate); `one_pass=False` for the official
                    step-by-step computation
    side stream     on CUDA, SAM2 image features start on a side stream before the vision tower
                    (they need only the pixels) and run beside it and the language model
    compiled        compile_sam / compile_llm (the worker's SA2VA_COMPILE=1): SAM2 image features as one
                    torch.compile graph, and the language model's RMSNorm / SiLU-gate as compiled
                    ops, CUDA only, compiled by warmup() before the first batch
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence, TypeVar

import numpy as np
import torch

from sa2va_queue.core.exceptions import ConfigError

from . import modeling, pixels
from .config import DRAFT_ANSWER, IMG_CONTEXT_TOKEN, MAX_NEW_TOKENS, MAX_TILES, SEG_TOKEN, USE_THUMBNAIL, Sa2VAConfig
from .modeling import Sa2VAForSegmentation, module_device, module_dtype, upsample_probability
from .processing import PreparedInput, check_tokenizer, prepare, prompt_ids

T = TypeVar("T")


def _compile(fn):
    """torch.compile with fused intermediates rounded to bf16 where eager code rounds them (casts
    emulated): the compiled graph computes what the eager one does, with fewer memory passes."""
    import torch._inductor.config as inductor_config

    options = {"emulate_precision_casts": True} if hasattr(inductor_config, "emulate_precision_casts") else {}
    return torch.compile(fn, dynamic=None, options=options)


def _window_major_features(sam, x):
    return modeling.sam_features(sam, x, window_major=True)


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
        draft_answer: str | None = DRAFT_ANSWER,
        one_pass: bool = True,
        compile_sam: bool = False,
        compile_llm: bool = False,
        overlap_sam: bool = True,
        sam_window_major: bool = True,
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
        # the trained model's usual answer, checked in one forward (modeling.generate); None: off
        self.draft_ids = self._script(draft_answer) if draft_answer else None
        # False: scripted answers decoded step by step too, as the official code (parity runs)
        self.one_pass = one_pass
        # SAM2 image features through torch.compile on CUDA (the worker's SA2VA_COMPILE setting),
        # and started on a side CUDA stream before the vision tower and the
        # language model, which it does not depend on
        self.compile_sam = compile_sam
        # the language model's RMSNorms and gated-MLP activations through torch.compile on CUDA
        # (SA2VA_COMPILE as well)
        self.compile_llm = compile_llm
        self._llm_ops: dict | None = None
        self._llm_ops_on = False
        self.overlap_sam = overlap_sam
        # SAM2's trunk in window-major token order (hiera.py): same values, fewer copies (compiled
        # SAM2 features 7.08 -> 6.76 ms per image at batch 32 on an H100, bench/gpu/sam_kernels.py)
        self.sam_window_major = sam_window_major
        self._sam_fn = None
        self._streams: dict[str, torch.cuda.Stream] = {}
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
        early = self._start_sam(batch) if self._overlap() else None
        self._llm_ops_follow()
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
            draft=self.draft_ids,
            one_pass=self.one_pass,
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
        lang = m.language_embeddings(torch.stack([h.to(pairs[0][1].device) for _, h in pairs]))
        if early is not None:  # features of every image, from the side stream
            feats, row = self._join_sam(early), {img: img for img in images_with_seg}
        else:
            seg_batch = batch if len(images_with_seg) == len(batch) else [batch[i] for i in images_with_seg]
            sam_in = self._sam_input(seg_batch, module_device(m.grounding_encoder))
            with self._sam_precision():
                feats = self._sam_features(sam_in)  # once per image, however many [SEG]s it has
            row = {img: r for r, img in enumerate(images_with_seg)}
        with self._sam_precision():
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

    # ------------------------------------------------------------------ SAM2 image features
    def _sam_features(self, sam_in: torch.Tensor) -> list[torch.Tensor]:
        fn = self._compiled_features() if self._compiling(sam_in.device) else None
        return self.model.sam_image_features(sam_in, features_fn=fn, window_major=self.sam_window_major)

    def _compiling(self, device: torch.device) -> bool:
        if device.type != "cuda" or not modeling.has_hiera_layout(self.model.grounding_encoder):
            return False
        return bool(self.compile_sam)

    def _compiled_features(self):
        if self._sam_fn is None:
            self._sam_fn = _compile(_window_major_features if self.sam_window_major else modeling.sam_features)
        return self._sam_fn

    def _llm_ops_follow(self) -> None:
        """Fused RMSNorm / SiLU-gate ops in the language model on CUDA when compile_llm asks for
        them; the library's forwards otherwise."""
        lm = self.model.language_model
        want = bool(self.compile_llm) and module_device(lm).type == "cuda"
        if want == self._llm_ops_on:
            return
        if want and self._llm_ops is None:
            self._llm_ops = {"rms_norm": _compile(modeling.rms_norm), "silu_mul": _compile(modeling.silu_mul)}
        modeling.use_fused_lm_ops(lm, self._llm_ops if want else None)
        self._llm_ops_on = want

    def warmup(self, batch_sizes: Sequence[int] = (2, 1)) -> float:
        """Compile what this pipeline compiles on CUDA before the first batch: the language model's
        fused ops, and SAM2 image features (batch 2 gives the graph every batch > 1 uses, batch 1 its
        own). Returns the seconds spent (0 when nothing is compiled)."""
        dev = module_device(self.model.grounding_encoder)
        t = time.perf_counter()
        self._llm_ops_follow()
        if self._llm_ops_on:  # shapes (b, tokens, C): static first, then dynamic, then batch 1
            lm = self.model.language_model.model
            c, dt, ldev = self.config.text.hidden_size, module_dtype(lm), module_device(lm)
            rows = modeling.FUSED_MIN_ROWS
            with torch.no_grad():
                for b, n in ((2, rows // 2 + 3), (3, rows // 3 + 5), (1, rows + 7)):
                    x = torch.zeros((b, n, c), device=ldev, dtype=dt)
                    lm.layers[0].mlp(lm.norm(x))
        if self._compiling(dev):
            s = self.config.sam_image_size
            with torch.no_grad(), self._sam_precision():
                for b in batch_sizes:
                    self._sam_features(torch.zeros((b, 3, s, s), device=dev))
        elif not self._llm_ops_on:
            return 0.0
        torch.cuda.synchronize()
        return time.perf_counter() - t

    def _overlap(self) -> bool:
        dev = module_device(self.model.grounding_encoder)
        return bool(self.overlap_sam) and dev.type == "cuda"

    def _start_sam(self, batch: Sequence[PreparedInput]):
        """SAM2 image features of every image of the batch, queued on a side stream of SAM2's device:
        they depend only on the pixels, so the GPU runs them beside the vision tower and the language
        model (and during their host gaps). An image without [SEG] wastes its share (rare)."""
        dev = module_device(self.model.grounding_encoder)
        sam_in = self._sam_input(batch, dev)
        key = str(dev)
        if key not in self._streams:
            self._streams[key] = torch.cuda.Stream(device=dev)
        side = self._streams[key]
        side.wait_stream(torch.cuda.current_stream(dev))  # the uploads and sam_in are queued there
        with torch.cuda.stream(side), self._sam_precision():
            feats = self._sam_features(sam_in)
        sam_in.record_stream(side)
        return side, dev, feats

    @staticmethod
    def _join_sam(early) -> list[torch.Tensor]:
        side, dev, feats = early
        torch.cuda.current_stream(dev).wait_stream(side)
        for f in feats:
            f.record_stream(torch.cuda.current_stream(dev))
        return feats

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
