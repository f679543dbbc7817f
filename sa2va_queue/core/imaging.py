"""Image and mask codecs shared by producer, worker and summarizer.

Images: PNG, JPEG or TIFF; 8- or 16-bit grey or RGB. Decoded to uint8 RGB (H, W, 3): 16-bit frames
are windowed from their own min to max, since X-ray detectors rarely fill the 16-bit range.
Masks are stored as 1-bit PNG (lossless); probability maps as 16-bit PNG (step 1/65535).
"""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from sa2va_queue.core.exceptions import GroundTruthMismatch, ImageDecodeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def probe_image(data: bytes, name: str) -> tuple[int, int, str, str]:
    """(width, height, PIL mode, media type) after a full decode; raises ImageDecodeError."""
    img = _open(data, name)
    return img.width, img.height, img.mode, MEDIA_TYPES.get(img.format or "", "application/octet-stream")


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the file header alone, without decoding the pixels."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageDecodeError(f"{name}: cannot read the image header ({exc})") from None


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode image bytes to uint8 RGB (H, W, 3). `name` only goes into error messages."""
    img = _open(data, name)
    if img.mode in ("RGB", "L"):
        arr = np.asarray(img)
    elif img.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
        arr = np.asarray(img.convert("RGB" if img.mode not in ("LA", "1") else "L"))
    else:  # I;16, I;16B, I, F: high bit depth grey
        arr = _window_to_uint8(np.asarray(img))
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8:
        arr = _window_to_uint8(arr)
    return np.ascontiguousarray(arr)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """float32 grey in [0, 1] from uint8 RGB."""
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def encode_mask(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool)).save(buf, format="PNG")
    return buf.getvalue()


def decode_mask(data: bytes, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as bool (H, W): any non-zero pixel is foreground (RGB masks: any channel)."""
    img = _open(data, name)
    arr = np.asarray(img)
    mask = arr.any(axis=2) if arr.ndim == 3 else arr > 0
    if shape is not None and mask.shape != tuple(shape):
        raise GroundTruthMismatch(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
            f"{shape[1]}x{shape[0]}; give a mask of the image's size"
        )
    return mask


def encode_probability(prob: np.ndarray) -> bytes:
    q = np.clip(np.rint(np.asarray(prob, np.float64) * 65535.0), 0, 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    return buf.getvalue()


def decode_probability(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.float32) / 65535.0


def _open(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes); replace it with the real image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()  # a truncated file fails here, not later in the model
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"{name}: cannot decode image ({exc}); the file is corrupt, truncated or not PNG/JPEG/TIFF"
        ) from None
    return img


def _window_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
