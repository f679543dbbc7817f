"""SAM2's Hiera trunk with its tokens kept in window-major order between blocks.

transformers' Sam2MultiScaleBlock partitions (B, H, W, C) into windows before its attention and
un-partitions after it: two full copies of the activations in every windowed block (45 of Hiera-L's
48), plus padding checks. Layer norms, residual adds and the MLP act per token, so they do not care
about token order; only the attention (tokens of one window together), the 2x2 query / residual
pooling (neighbours within a window) and the global blocks (the whole image as one window) do. Here
the tokens stay in a (B, nh, nw, wh, ww, C) layout, the windows of the last block, and are re-laid
out only where the next block's window differs (a stage's first block after a pooling, the global
blocks). A 2x2 max-pool of such a layout is a pool inside each window, since windows start at even
positions. Same modules, same ops per token: fp32 results equal the library's trunk.

Used by modeling.sam_features when every stage's map divides into whole windows (a 1024 px Hiera-L
does at every stage); otherwise the library's blocks run as before.
"""

from __future__ import annotations

import torch
from torch import nn


def _windows(x: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    """(B, H, W, C) -> (B, H // wh, W // ww, wh, ww, C), contiguous."""
    b, h, w, c = x.shape
    return x.view(b, h // wh, wh, w // ww, ww, c).permute(0, 1, 3, 2, 4, 5).contiguous()


def _spatial(xw: torch.Tensor) -> torch.Tensor:
    """(B, nh, nw, wh, ww, C) -> (B, nh * wh, nw * ww, C); a view where the layout is one window."""
    b, nh, nw, wh, ww, c = xw.shape
    if nh == 1 and nw == 1:
        return xw.view(b, wh, ww, c)
    return xw.permute(0, 1, 3, 2, 4, 5).reshape(b, nh * wh, nw * ww, c)


def _relayout(xw: torch.Tensor, wh: int, ww: int) -> torch.Tensor:
    if xw.shape[3] == wh and xw.shape[4] == ww:
        return xw
    return _windows(_spatial(xw), wh, ww)


def _pool(xw: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """2-D max-pool with kernel = stride of every window: (B, nh, nw, wh, ww, C) -> (..., wh/s, ww/s, C)."""
    b, nh, nw, wh, ww, c = xw.shape
    sh, sw = stride
    return xw.view(b, nh, nw, wh // sh, sh, ww // sw, sw, c).amax(dim=(4, 6))


def _block_window(block: nn.Module, h: int, w: int) -> tuple[int, int]:
    return (block.window_size, block.window_size) if block.window_size > 0 else (h, w)


def fits_window_major(trunk: nn.Module, h: int, w: int) -> bool:
    """Whether a (h, w) token map after the patch embedding meets only whole windows in every block
    of `trunk` (no padding), with every query stride dividing its windows."""
    for block in trunk.blocks:
        wh, ww = _block_window(block, h, w)
        if h % wh or w % ww:
            return False
        stride = block.query_stride
        if stride:
            if wh % stride[0] or ww % stride[1]:
                return False
            h, w = h // stride[0], w // stride[1]
    return True


def _block(block: nn.Module, xw: torch.Tensor) -> torch.Tensor:
    """Sam2MultiScaleBlock.forward on window-major tokens; returns them in its output windows."""
    b, nh, nw, wh, ww, _ = xw.shape
    residual = xw
    normed = block.layer_norm1(xw)
    if block.dim != block.dim_out:
        residual = block.proj(normed)
        if block.query_stride:
            residual = _pool(residual, block.query_stride)
    attn = block.attn(normed.view(b * nh * nw, wh, ww, -1))  # (windows, wh', ww', C_out)
    x = residual + attn.view(residual.shape)
    return x + block.mlp(block.layer_norm2(x))


def trunk_stages(trunk: nn.Module, h: torch.Tensor) -> list[torch.Tensor]:
    """The trunk's stage outputs, each (B, H, W, C), as running `h` (the patch embedding plus its
    position embedding, (B, H, W, C)) through trunk.blocks and keeping the outputs at
    trunk.stage_ends would give them."""
    height, width = h.shape[1:3]
    xw = h.unsqueeze(1).unsqueeze(1)  # one window of the whole map
    stages = []
    for i, block in enumerate(trunk.blocks):
        xw = _block(block, _relayout(xw, *_block_window(block, height, width)))
        if block.query_stride:
            height, width = height // block.query_stride[0], width // block.query_stride[1]
        if i in trunk.stage_ends:
            stages.append(_spatial(xw))
    return stages
