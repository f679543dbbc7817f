"""The PNG writer in core/imaging.py: PIL (and so every reader of ours) decodes its files to the
exact pixels written, for every shape the worker and the DICOM reader produce."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sa2va_queue.core.imaging import decode_mask, decode_probability, encode_mask, encode_png, encode_probability


def _pil(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    img.load()  # checks every chunk's CRC and the zlib stream
    return img


@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (8, 8), (9, 17), (64, 64), (5, 130)])
def test_masks_round_trip_at_every_row_width(shape: tuple[int, int]) -> None:
    mask = np.random.default_rng(sum(shape)).random(shape) > 0.6
    data = encode_mask(mask)
    assert _pil(data).mode == "1"
    assert np.array_equal(decode_mask(data, "m.png"), mask)


def test_empty_and_full_masks_round_trip() -> None:
    for mask in (np.zeros((12, 13), bool), np.ones((12, 13), bool)):
        assert np.array_equal(decode_mask(encode_mask(mask), "m.png"), mask)


def test_probabilities_keep_their_16_bit_step() -> None:
    prob = np.random.default_rng(1).random((33, 47)).astype(np.float32)
    prob[0, :3] = [0.0, 1.0, 0.5]
    data = encode_probability(prob)
    assert _pil(data).mode.startswith("I;16")
    back = decode_probability(data)
    assert back.shape == prob.shape
    assert np.max(np.abs(back - prob)) <= 0.5 / 65535 + 1e-7
    assert back[0, 0] == 0.0 and back[0, 1] == 1.0


def test_probabilities_outside_zero_one_are_clipped() -> None:
    back = decode_probability(encode_probability(np.array([[-0.5, 1.5]], np.float32)))
    assert back.tolist() == [[0.0, 1.0]]


@pytest.mark.parametrize("channels", [None, 3])
def test_grey_and_rgb_frames_round_trip(channels: int | None) -> None:
    shape = (21, 19) if channels is None else (21, 19, channels)
    pixels = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    img = _pil(encode_png(pixels))
    assert img.mode == ("L" if channels is None else "RGB")
    assert np.array_equal(np.asarray(img), pixels)


def test_encode_png_refuses_other_layouts() -> None:
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((4, 4, 2), np.uint8))


def test_maps_in_any_memory_order_are_written_as_seen() -> None:
    # a backend may hand back a transposed or sliced view (Fortran order, strides)
    prob = np.asfortranarray(np.random.default_rng(2).random((40, 24)).astype(np.float32))
    assert np.abs(decode_probability(encode_probability(prob)) - prob).max() <= 0.5 / 65535 + 1e-7
    mask = prob[::2, 1::3] > 0.5
    assert np.array_equal(decode_mask(encode_mask(mask), "m.png"), mask)
