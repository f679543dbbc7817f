"""Multi-frame images: every TIFF page is seen and decodable, none is dropped silently."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sa2va_queue.core.exceptions import ImageDecodeError
from sa2va_queue.core.imaging import decode_image, encode_mask, frame_count, probe_image


def _tiff(pages: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.fromarray(p) for p in pages]
    first.save(buf, format="TIFF", save_all=True, append_images=rest)
    return buf.getvalue()


def test_a_three_page_tiff_is_three_frames() -> None:
    pages = [np.full((32, 48), 40 * (k + 1), np.uint8) for k in range(3)]
    pages[2][5, 7] = 255  # each page has its own content
    data = _tiff(pages)
    assert frame_count(data, "cine.tif") == 3
    for k, page in enumerate(pages):
        rgb = decode_image(data, "cine.tif", frame=k)
        assert rgb.shape == (32, 48, 3)
        np.testing.assert_array_equal(rgb[:, :, 0], page)
    assert probe_image(data, "cine.tif", frame=2)[:3] == (48, 32, "L")
    np.testing.assert_array_equal(decode_image(data, "cine.tif"), decode_image(data, "cine.tif", frame=0))


def test_frame_out_of_range_names_the_file_and_the_count() -> None:
    data = _tiff([np.zeros((8, 8), np.uint8)] * 3)
    with pytest.raises(ImageDecodeError, match=r"cine\.tif: has 3 frame\(s\), no frame 3"):
        decode_image(data, "cine.tif", frame=3)


def test_single_frame_files_and_garbage() -> None:
    assert frame_count(encode_mask(np.zeros((4, 4), bool)), "m.png") == 1
    assert frame_count(_tiff([np.zeros((8, 8), np.uint16)]), "one.tif") == 1
    with pytest.raises(ImageDecodeError, match="x.tif"):
        frame_count(b"not an image", "x.tif")
