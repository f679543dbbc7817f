"""Image and mask codecs shared by producer, worker and summarizer.

Images: PNG, JPEG or TIFF; 8- or 16-bit grey or RGB. Decoded to uint8 RGB (H, W, 3): 16-bit frames
are windowed from their own min to max, since X-ray detectors rarely fill the 16-bit range.
Masks are stored as 1-bit PNG (lossless); probability maps as 16-bit PNG (step 1/65535).

Every reader here is total: whatever the bytes are, it returns or raises ImageDecodeError (or its
subclass ImageTooLarge) with a one-line reason naming the file. The pixel limit (SA2VA_MAX_PIXELS,
set once per process by `set_max_pixels`) is checked against the header before any pixel is
decoded: a 74-byte PNG declaring 40000x40000 costs nothing, and a frame over the limit is refused,
never downscaled (its ground truth and metrics would silently move to another pixel grid).
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError

from sa2va_queue.core.exceptions import GroundTruthMismatch, ImageDecodeError, ImageTooLarge

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MEDIA_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff"}

# 4096 x 4096: 64x a 512x512 angiography frame. Above it the vesselness baseline takes minutes per
# frame and gigabytes of worker memory (8000x8000 took 234 s and 4.5 GB).
DEFAULT_MAX_PIXELS = 4096 * 4096
_PIL_DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 0
_max_pixels = DEFAULT_MAX_PIXELS


def set_max_pixels(limit: int) -> None:
    """The process-wide pixel limit (SA2VA_MAX_PIXELS); set once at start by the CLI."""
    global _max_pixels
    if limit < 1:
        raise ValueError(f"pixel limit must be at least 1, got {limit}")
    _max_pixels = int(limit)
    # PIL refuses outright at twice its own limit; keep that above ours so ours is what users see
    Image.MAX_IMAGE_PIXELS = max(_PIL_DEFAULT_MAX_PIXELS, _max_pixels)


def max_pixels() -> int:
    return _max_pixels


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def frame_count(data: bytes, name: str = "image") -> int:
    """How many frames the file holds (TIFF pages, animated PNG), from the headers, no pixel decoded.

    A multi-frame file is one job per frame (`frame=` below); taking only the first would silently
    drop the others.
    """
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes); replace it with the real image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                return int(getattr(img, "n_frames", 1))
    except Image.DecompressionBombError as exc:
        raise _too_large(name, _bomb_pixels(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- any failure of a codec on hostile bytes is this file's error
        raise ImageDecodeError(f"{name}: cannot read the image header ({_reason(exc)})") from None


def probe_image(data: bytes, name: str, frame: int = 0) -> tuple[int, int, str, str]:
    """(width, height, PIL mode, media type) of one frame after a full decode; raises ImageDecodeError."""
    img = _open(data, name, frame)
    return img.width, img.height, img.mode, MEDIA_TYPES.get(img.format or "", "application/octet-stream")


def image_size(data: bytes, name: str) -> tuple[int, int]:
    """(width, height) from the file header alone, without decoding the pixels."""
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes); replace it with the real image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            with Image.open(io.BytesIO(data)) as img:
                _check_pixels(img.size, name)
                return img.size
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(name, _bomb_pixels(exc)) from None
    except Exception as exc:  # noqa: BLE001 -- any failure of a codec on hostile bytes is this file's error
        raise ImageDecodeError(f"{name}: cannot read the image header ({_reason(exc)})") from None


def decode_image(data: bytes, name: str, frame: int = 0) -> np.ndarray:
    """Decode one frame (0-based; TIFF page) to uint8 RGB (H, W, 3). `name` only goes into errors."""
    img = _open(data, name, frame)
    try:
        if img.mode == "RGB":
            arr = np.asarray(img)
        elif img.mode == "L":  # PIL's own copy to RGB: half the time of np.repeat, a host cost per job
            arr = np.asarray(img.convert("RGB"))
        elif img.mode in ("RGBA", "LA", "P", "CMYK", "YCbCr", "1"):
            arr = np.asarray(img.convert("RGB" if img.mode not in ("LA", "1") else "L"))
        else:  # I;16, I;16B, I, F: high bit depth grey
            arr = _window_to_uint8(np.asarray(img))
    except Exception as exc:  # noqa: BLE001 -- an odd mode or layout is this file's error
        raise ImageDecodeError(f"{name}: cannot convert the {img.mode} image to RGB ({_reason(exc)})") from None
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3)):
        raise ImageDecodeError(f"{name}: unexpected pixel layout {arr.shape}; save it as grey or RGB")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.dtype != np.uint8:
        arr = _window_to_uint8(arr)
    return np.ascontiguousarray(arr)


def to_grey(rgb: np.ndarray) -> np.ndarray:
    """float32 grey in [0, 1] from uint8 RGB."""
    return (rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)) / 255.0


def encode_png(pixels: np.ndarray) -> bytes:
    """uint8 grey (H, W) or RGB (H, W, 3) as a lossless PNG (frames cut out of DICOM or TIFF files)."""
    px = np.ascontiguousarray(pixels, dtype=np.uint8)
    if px.ndim == 3 and px.shape[2] == 3:
        return _png(px.reshape(px.shape[0], -1), px.shape[1], px.shape[0], bit_depth=8, colour=_RGB)
    if px.ndim != 2:
        raise ValueError(f"encode_png takes (H, W) or (H, W, 3) pixels, got shape {px.shape}")
    return _png(px, px.shape[1], px.shape[0], bit_depth=8, colour=_GREY)


def encode_mask(mask: np.ndarray) -> bytes:
    """1-bit PNG, rows packed with numpy; zlib level 1: the worker encodes one per job on the host,
    and level 6 saves little on sparse vessel masks."""
    m = np.ascontiguousarray(mask, dtype=bool)
    return _png(np.packbits(m, axis=1), m.shape[1], m.shape[0], bit_depth=1, colour=_GREY, runs=True)


def _png(rows: np.ndarray, width: int, height: int, *, bit_depth: int, colour: int, runs: bool = False) -> bytes:
    """A PNG from packed scanlines (uint8 (H, bytes per row)), filter 0, zlib level 1.

    `runs`: zlib's run-length strategy, for masks and probability maps. On 512 px frames it writes
    masks 3-7 % smaller in 30-60 % less time, and a map of a random-weight model (16-bit noise that
    barely compresses) in half the time (6 instead of 12 ms); a vessel map comes out 9 % larger in
    20 % less time. Photographs and angiograms keep the default (matches pay there).

    PIL's PNG writer spends 0.2-0.3 ms of Python per image on chunk bookkeeping, twice per job in
    the worker's host threads (mask and probability map); this writes the same standard file
    (signature, IHDR, one IDAT, IEND; PNG spec section 11) in C calls only: 2-5x less time, and
    zlib.compress lets the other threads run. Decoding stays with PIL."""
    scan = np.empty((height, rows.shape[1] + 1), np.uint8)
    scan[:, 0] = 0  # filter type None on every scanline
    scan[:, 1:] = rows
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour, 0, 0, 0)
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 8, zlib.Z_RLE if runs else zlib.Z_DEFAULT_STRATEGY)
    idat = packer.compress(scan) + packer.flush()  # both calls release the GIL while they pack
    return b"".join((_PNG_SIGNATURE, _chunk(b"IHDR", header), _chunk(b"IDAT", idat), _chunk(b"IEND", b"")))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GREY, _RGB = 0, 2  # PNG colour types


def decode_mask(data: bytes, name: str, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A mask PNG as bool (H, W): any non-zero pixel is foreground (RGB masks: any channel)."""
    img = _open(data, name)
    try:
        arr = np.asarray(img)
        mask = arr.any(axis=2) if arr.ndim == 3 else arr > 0
    except Exception as exc:  # noqa: BLE001
        raise ImageDecodeError(f"{name}: cannot read the {img.mode} mask ({_reason(exc)})") from None
    if shape is not None and mask.shape != tuple(shape):
        raise GroundTruthMismatch(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image is "
            f"{shape[1]}x{shape[0]}; give a mask of the image's size"
        )
    return mask


def quantize_probability(prob: np.ndarray) -> np.ndarray:
    """The stored form of a probability map: uint16, step 1/65535 (what encode_probability writes)."""
    return np.clip(np.rint(np.asarray(prob, np.float32) * np.float32(65535.0)), 0, 65535).astype(np.uint16)


def encode_probability(prob: np.ndarray) -> bytes:
    """16-bit PNG (step 1/65535); float32 arithmetic and zlib level 1 keep it to a few ms per frame."""
    return encode_quantized_probability(quantize_probability(prob))


def encode_quantized_probability(quantized: np.ndarray) -> bytes:
    """The PNG of a map already quantized (quantize_probability)."""
    q = np.ascontiguousarray(quantized, dtype=">u2")  # any memory order (a transposed map, say)
    return _png(q.view(np.uint8).reshape(q.shape[0], -1), q.shape[1], q.shape[0], bit_depth=16, colour=_GREY,
                runs=True)


def decode_probability(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.float32) / 65535.0


def _open(data: bytes, name: str, frame: int = 0) -> Image.Image:
    if not data:
        raise ImageDecodeError(f"{name}: the file is empty (0 bytes); replace it with the real image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below
            img = Image.open(io.BytesIO(data))
            if frame:
                n = int(getattr(img, "n_frames", 1))
                if not 0 <= frame < n:
                    raise ImageDecodeError(f"{name}: has {n} frame(s), no frame {frame}; frames count from 0")
                img.seek(frame)
            _check_pixels(img.size, name)  # from the header, before any pixel is decoded
            img.load()  # a truncated file fails here, not later in the model
    except ImageDecodeError:  # ImageTooLarge, or a frame number out of range
        raise
    except Image.DecompressionBombError as exc:
        raise _too_large(name, _bomb_pixels(exc)) from None
    except MemoryError:
        raise ImageDecodeError(f"{name}: not enough memory to decode it; lower SA2VA_MAX_PIXELS") from None
    except Exception as exc:  # noqa: BLE001 -- codecs raise many types on hostile bytes
        raise ImageDecodeError(
            f"{name}: cannot decode image ({_reason(exc)}); the file is corrupt, truncated or not PNG/JPEG/TIFF"
        ) from None
    return img


def _check_pixels(size: tuple[int, int], name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageDecodeError(f"{name}: the header declares {width}x{height} pixels; the file is corrupt")
    if width * height > _max_pixels:
        raise _too_large(name, width * height, f" ({width}x{height})")


def _too_large(name: str, pixels: int | None, size: str = "") -> ImageTooLarge:
    count = f"{pixels} px" if pixels is not None else "over PIL's decompression-bomb limit"
    return ImageTooLarge(f"{name}: too large: {count}{size}, limit {_max_pixels}; downscale the image, "
                         "or raise SA2VA_MAX_PIXELS if the workers have the memory")


def _bomb_pixels(exc: Exception) -> int | None:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return int(found.group(1)) if found else None


def _reason(exc: Exception) -> str:
    """An exception as a short single line (codec messages can be long or multi-line)."""
    if isinstance(exc, UnidentifiedImageError):  # its message is "<_io.BytesIO object at 0x...>"
        return "not a recognised image format"
    text = " ".join(str(exc).split())[:200]
    if text and isinstance(exc, (OSError, ValueError, SyntaxError)):  # the codecs' usual, readable ones
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _window_to_uint8(arr: np.ndarray) -> np.ndarray:
    arr = arr.astype(np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)
