"""Input preparation, step by step as Sa2VA's `predict_forward` does it.

`prepare` keeps the host work cheap (pixel checks, tile grid, cached token ids); the resizes below
are the PIL reference path, which pixels.py reproduces exactly on the model's device.

- LLM image: dynamic tiling into `tile` px squares (1..12 tiles, grid closest to the image's aspect
  ratio, a thumbnail when there is more than one tile), bicubic (PIL) resizes, /255, ImageNet norm.
- SAM2 image: the whole image resized to S x S (aspect ratio not kept, PIL bicubic), /255, ImageNet norm
  with the constants rounded to bf16 (as the official SAM2.preprocess_image).
- Prompt: `<image>` -> `<img>` + `<IMG_CONTEXT>` x (tokens per tile x tiles) + `</img>`, inside the chat
  template `<|im_start|>user\\n{input}<|im_end|>\\n<|im_start|>assistant\\n`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sa2va_queue.core.exceptions import InputError, ModelError

from .config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    IMG_CONTEXT_TOKEN,
    IMG_END_TOKEN,
    IMG_START_TOKEN,
    MAX_TILES,
    MIN_TILES,
    SA2VA_ADDED_TOKENS,
    SEG_TOKEN,
    USE_THUMBNAIL,
    Sa2VAConfig,
)

_MEAN = np.array(IMAGENET_MEAN, np.float32)
_STD = np.array(IMAGENET_STD, np.float32)
# SAM2 input: the official `SAM2.preprocess_image(image, dtype=torch.bfloat16)` builds mean/std as bf16
# tensors whatever the model dtype (and bf16 training normalised in bf16), so the constants the model
# saw are the bf16-rounded ImageNet values: mean (0.484375, 0.455078125, 0.40625), std (0.228515625,
# 0.2236328125, 0.224609375). The InternViT tiles use the exact values (torchvision Normalize).
_SAM_MEAN = torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16).float().numpy()
_SAM_STD = torch.tensor(IMAGENET_STD, dtype=torch.bfloat16).float().numpy()


def find_closest_aspect_ratio(aspect: float, ratios: list[tuple[int, int]], width: int, height: int, tile: int):
    """Closest grid (cols, rows); on a tie the later (larger) grid wins if the image covers > half of it."""
    best_diff = float("inf")
    best = (1, 1)
    area = width * height
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best_diff, best = diff, (cols, rows)
        elif diff == best_diff and area > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def tile_grid(width: int, height: int, tile: int, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES):
    ratios = sorted(
        {
            (i, j)
            for n in range(min_tiles, max_tiles + 1)
            for i in range(1, n + 1)
            for j in range(1, n + 1)
            if min_tiles <= i * j <= max_tiles
        },
        key=lambda r: r[0] * r[1],
    )
    return find_closest_aspect_ratio(width / height, ratios, width, height, tile)


def dynamic_tiles(
    img: Image.Image, tile: int, min_tiles: int = MIN_TILES, max_tiles: int = MAX_TILES, thumbnail: bool = USE_THUMBNAIL,
    grid: tuple[int, int] | None = None,
) -> list[Image.Image]:
    cols, rows = grid or tile_grid(img.width, img.height, tile, min_tiles, max_tiles)
    resized = img.resize((tile * cols, tile * rows), Image.Resampling.BICUBIC)
    out = []
    for i in range(cols * rows):
        x, y = (i % cols) * tile, (i // cols) * tile
        out.append(resized.crop((x, y, x + tile, y + tile)))
    if thumbnail and len(out) != 1:
        out.append(img.resize((tile, tile), Image.Resampling.BICUBIC))
    return out


def normalise(arr: np.ndarray, mean: np.ndarray = _MEAN, std: np.ndarray = _STD) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W), /255 then ImageNet mean/std."""
    x = (arr.astype(np.float32) / 255.0 - mean) / std
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def tile_pixels(img: Image.Image, tile: int, max_tiles: int = MAX_TILES, grid: tuple[int, int] | None = None) -> torch.Tensor:
    tiles = dynamic_tiles(img, tile, MIN_TILES, max_tiles, USE_THUMBNAIL, grid)
    # the official per-tile Resize((tile, tile), bicubic) is the identity on tile-sized crops
    return torch.stack([normalise(np.asarray(t.convert("RGB"))) for t in tiles])


def sam_pixels(img: Image.Image, size: int) -> torch.Tensor:
    return normalise(np.asarray(img.resize((size, size), Image.Resampling.BICUBIC)), _SAM_MEAN, _SAM_STD)


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise InputError(f"{where}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise InputError(f"{where}: expected uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"{where}: expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.shape[0] < 2 or image.shape[1] < 2:
        raise InputError(f"{where}: image {image.shape[1]}x{image.shape[0]} is too small")
    return np.ascontiguousarray(image)


def build_prompt(config: Sa2VAConfig, prompt: str, n_tiles: int) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("empty prompt; give e.g. '<image>Please segment the blood vessel.'")
    if prompt.count("<image>") > 1:
        raise InputError(f"prompt has {prompt.count('<image>')} '<image>' placeholders; one image per request")
    if "<image>" not in prompt:
        prompt = "<image>" + prompt  # the official code asserts on a missing placeholder; training put it first
    image_str = IMG_START_TOKEN + IMG_CONTEXT_TOKEN * (config.num_image_token * n_tiles) + IMG_END_TOKEN
    text = prompt.replace("<image>", image_str)
    return config.instruction.format(input=text)


@dataclass
class PreparedInput:
    """The host side of one (image, prompt): checked uint8 pixels, the tile grid and the token ids.

    Resizing and normalisation happen in the batch, on the model's device (pixels.py);
    `pixel_values` / `sam_pixel_values` give the PIL-path float32 tensors (CPU models, tests, the
    parity harness)."""

    image: np.ndarray  # uint8 (H, W, 3), C-contiguous
    grid: tuple[int, int]  # (cols, rows) of tile-px tiles
    input_ids: list[int]
    size: tuple[int, int]  # original (H, W)
    prompt: str
    tile_size: int
    sam_size: int

    @property
    def n_tiles(self) -> int:
        cols, rows = self.grid
        return cols * rows + (1 if USE_THUMBNAIL and cols * rows != 1 else 0)

    @property
    def pixel_values(self) -> torch.Tensor:  # (n_tiles, 3, tile, tile) float32
        cols, rows = self.grid
        return tile_pixels(Image.fromarray(self.image), self.tile_size, grid=(cols, rows))

    @property
    def sam_pixel_values(self) -> torch.Tensor:  # (3, S, S) float32
        return sam_pixels(Image.fromarray(self.image), self.sam_size)


def prompt_ids(config: Sa2VAConfig, tokenizer, prompt: str, n_tiles: int) -> list[int]:
    """Token ids of the chat-templated prompt with its image placeholder expanded for `n_tiles`."""
    ids = tokenizer.encode(build_prompt(config, prompt, n_tiles))
    ctx = tokenizer.convert_tokens_to_ids(IMG_CONTEXT_TOKEN)
    n_ctx = sum(1 for t in ids if t == ctx)
    want = config.num_image_token * n_tiles
    if n_ctx != want:
        raise ModelError(f"tokenizer produced {n_ctx} {IMG_CONTEXT_TOKEN} tokens, expected {want}")
    return list(ids)


def prepare(config: Sa2VAConfig, tokenizer, image: np.ndarray, prompt: str, max_tiles: int = MAX_TILES,
            ids=prompt_ids) -> PreparedInput:
    """Cheap host work only (a few ms): check the pixels, choose the tile grid, token ids
    (`ids(config, tokenizer, prompt, n_tiles)`, cached by the pipeline)."""
    image = check_image(image)
    h, w = int(image.shape[0]), int(image.shape[1])
    grid = tile_grid(w, h, config.tile_size, MIN_TILES, max_tiles)
    out = PreparedInput(image, grid, [], (h, w), prompt, config.tile_size, config.sam_image_size)
    out.input_ids = ids(config, tokenizer, prompt, out.n_tiles)
    return out


# ----------------------------------------------------------------------------------------------
# Tokenizer


def check_tokenizer(tokenizer, vocab_size: int | None = None, where: str = "tokenizer") -> None:
    unk = getattr(tokenizer, "unk_token_id", None)
    missing = []
    for tok in (SEG_TOKEN, IMG_CONTEXT_TOKEN, IMG_START_TOKEN, IMG_END_TOKEN, "<|im_end|>"):
        tid = tokenizer.convert_tokens_to_ids(tok)
        if tid is None or (unk is not None and tid == unk and tok != tokenizer.unk_token):
            missing.append(tok)
    if missing:
        raise ModelError(f"{where}: lacks the Sa2VA tokens {missing} (expected added tokens {SA2VA_ADDED_TOKENS})")
    if vocab_size is not None and len(tokenizer) > vocab_size:
        raise ModelError(f"{where}: {len(tokenizer)} tokens but the language model has only {vocab_size} embeddings")


def load_tokenizer(folder: str | Path):
    """The folder's tokenizer without remote code: tokenizer.json when present, else AutoTokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(folder)
    tj = folder / "tokenizer.json"
    errors = []
    if tj.is_file():
        try:
            kwargs = {}
            cfg_path = folder / "tokenizer_config.json"
            if cfg_path.is_file():
                cfg = json.loads(cfg_path.read_text())
                for k in ("bos_token", "eos_token", "pad_token", "unk_token"):
                    v = cfg.get(k)
                    if isinstance(v, dict):
                        v = v.get("content")
                    if isinstance(v, str):
                        kwargs[k] = v
            return PreTrainedTokenizerFast(tokenizer_file=str(tj), **kwargs)
        except Exception as exc:  # pragma: no cover - depends on the folder
            errors.append(f"tokenizer.json: {exc}")
    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as exc:
        errors.append(f"AutoTokenizer: {exc}")
    raise ModelError(
        f"{folder}: cannot load the tokenizer without remote code ({'; '.join(errors)[:400]}). An InternLM2 "
        "folder with only tokenizer.model needs a tokenizer.json: load it once where sentencepiece is installed "
        "and save it with save_pretrained()"
    )
