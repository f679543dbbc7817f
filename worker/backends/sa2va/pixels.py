"""Model inputs from uint8 pixels, on the model's device: the PIL steps of `predict_forward` in torch.

The official code resizes with PIL (bicubic) on the CPU, then normalises. Here the same happens on
whatever device the vision tower / SAM2 sit on, for all images of a batch at once, so the host
keeps only a uint8 array per job (processing.py) and copies 0.75 MB per 512x512 frame instead of
12.6 MB of float32 SAM2 input.

Equal to PIL, bit for bit: PIL resizes 8-bit images in two passes, horizontal then vertical, each
with integer filter coefficients (22 fractional bits) and a rounded, clipped uint8 result.
`resize_like_pil` builds the same integer coefficients (PIL's precompute_coeffs and
normalize_coeffs_8bpc, bicubic a=-0.5) as dense matrices and applies them as float64 matrix
products, which are exact for these integer sums (all below 2**53), then rounds and clips as
PIL's clip8. Normalisation is the same float32 arithmetic as processing.normalise. So tiles and
SAM2 inputs equal those of the PIL path exactly (test_sa2va_processing.py), on the CPU and the GPU.
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import IMAGENET_MEAN, IMAGENET_STD

# SAM2's bf16-rounded ImageNet constants: see processing.py.
SAM_MEAN = tuple(torch.tensor(IMAGENET_MEAN, dtype=torch.bfloat16).float().tolist())
SAM_STD = tuple(torch.tensor(IMAGENET_STD, dtype=torch.bfloat16).float().tolist())


PRECISION_BITS = 32 - 8 - 2  # PIL's Resample.c for 8 bits per channel


def _bicubic(x: float) -> float:
    a = -0.5
    x = abs(x)
    if x < 1.0:
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    if x < 2.0:
        return (((x - 5) * x + 8) * x - 4) * a
    return 0.0


@functools.lru_cache(maxsize=32)
def pil_coefficients(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix of PIL's integer bicubic coefficients (scaled by 2**22),
    computed in the same order of double operations as PIL's precompute_coeffs."""
    scale = filterscale = in_size / out_size
    if filterscale < 1.0:
        filterscale = 1.0
    support = 2.0 * filterscale
    out = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        ss = 1.0 / filterscale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size) - xmin
        k = [_bicubic((x + xmin - center + 0.5) * ss) for x in range(xmax)]
        ww = 0.0
        for w in k:
            ww += w
        for x, w in enumerate(k):
            w = w / ww if ww != 0.0 else w
            # C's (int) truncates toward zero, as Python's int()
            out[xx, xmin + x] = int(-0.5 + w * (1 << PRECISION_BITS)) if w < 0 else int(0.5 + w * (1 << PRECISION_BITS))
    return out


def _weights(in_size: int, out_size: int, device: torch.device) -> torch.Tensor:
    key = (in_size, out_size, str(device))
    w = _WEIGHTS.get(key)
    if w is None:
        w = _WEIGHTS[key] = torch.from_numpy(pil_coefficients(in_size, out_size)).to(device)
    return w


_WEIGHTS: dict[tuple[int, int, str], torch.Tensor] = {}


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    """PIL's clip8 of an accumulator that started at 2**21: floor(acc / 2**22), clipped to 0..255."""
    return torch.floor((acc + (1 << (PRECISION_BITS - 1))) / (1 << PRECISION_BITS)).clamp_(0, 255)


def resize_like_pil(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) uint8 values (any float or uint8 dtype) -> float64 (B, C, height, width), equal
    to PIL's `Image.resize((width, height), BICUBIC)` of the same 8-bit image."""
    x = x.to(torch.float64)
    if x.shape[-1] != width:
        x = _clip8(x @ _weights(x.shape[-1], width, x.device).T)
    if x.shape[-2] != height:
        x = _clip8(_weights(x.shape[-2], height, x.device) @ x)
    return x


def normalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(B, 3, H, W) in 0..255 -> float32 /255, minus mean, over std (as processing.normalise)."""
    x = x.to(torch.float32)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    # a device tensor, not the Python scalar: CUDA divides by a scalar as a multiplication by its
    # reciprocal, one rounding off numpy's true division
    return (x / torch.full((), 255.0, dtype=torch.float32, device=x.device) - m) / s


def to_device(images: Sequence, device: torch.device | str) -> torch.Tensor:
    """uint8 (H, W, 3) arrays of one size -> uint8 (B, 3, H, W) on `device`: each array copied
    once into a pinned buffer, then one asynchronous transfer."""
    device = torch.device(device)
    first = images[0]
    if device.type != "cuda":
        return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2)
    host = torch.empty((len(images), *first.shape), dtype=torch.uint8, pin_memory=True)
    view = host.numpy()
    for i, im in enumerate(images):
        view[i] = im
    return host.to(device, non_blocking=True).permute(0, 3, 1, 2)


def to_host(x: torch.Tensor) -> np.ndarray:
    """A device tensor -> numpy through a pinned buffer (a pageable copy of tens of MB runs at about
    1 GB/s, a pinned one at the link's speed)."""
    if x.device.type != "cuda":
        return x.numpy()
    host = torch.empty(x.shape, dtype=x.dtype, pin_memory=True)
    host.copy_(x)
    return host.numpy()


def tiles(x: torch.Tensor, grid: tuple[int, int], tile: int, thumbnail: bool) -> torch.Tensor:
    """Images of one size (B, 3, H, W), values 0..255 -> normalised tiles (B * n, 3, tile, tile),
    each image's tiles together, row by row, then its thumbnail (when more than one tile)."""
    cols, rows = grid
    b = x.shape[0]
    big = resize_like_pil(x, tile * rows, tile * cols)
    out = big.reshape(b, 3, rows, tile, cols, tile).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, 3, tile, tile)
    if thumbnail and rows * cols != 1:
        thumb = resize_like_pil(x, tile, tile)
        out = torch.cat([out, thumb[:, None]], dim=1)
    n = out.shape[1]
    return normalise(out.reshape(b * n, 3, tile, tile), IMAGENET_MEAN, IMAGENET_STD)


def sam_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """Images of one size (B, 3, H, W), values 0..255 -> SAM2 input (B, 3, size, size)."""
    return normalise(resize_like_pil(x, size, size), SAM_MEAN, SAM_STD)
