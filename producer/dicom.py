"""The one DICOM reader: X-ray angiography instances into windowed 8-bit frames.

Accepted: X-Ray Angiographic Image Storage (single frame or multi-frame cine), Enhanced XA and
Secondary Capture (single- and multi-frame), grey or colour, in any transfer syntax pydicom can
decode: uncompressed, deflated, RLE, JPEG baseline and JPEG lossless (through pylibjpeg), JPEG-LS
and JPEG 2000 where their plugins are installed.

Windowing, per frame, the way a viewer shows the image (PS3.3 C.11):
1. modality LUT / rescale (top level, or the frame's Pixel Value Transformation functional group);
2. the VOI LUT Sequence, else Window Center/Width (top level, or the frame's Frame VOI LUT
   functional group), the first view when several are given;
3. neither present: the frame's own min to max.
MONOCHROME1 is inverted afterwards so that every output reads like MONOCHROME2. Output: uint8,
(H, W) grey or (H, W, 3) RGB.

Frames are named `<file relative to base>#frame_<NNNNNN>` (1-based, as DICOM numbers frames) and
carry the Study, Series and SOP Instance UIDs in `Frame.meta`. The pixel data reaches the queue as
a lossless PNG of the windowed frame. Bad files raise `DicomError` subclasses, one line each.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import Dataset, dcmread
from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
from pydicom.uid import (
    EnhancedXAImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage,
    SecondaryCaptureImageStorage,
    XRayAngiographicImageStorage,
)

from sa2va_queue.core.exceptions import ConfigError, DicomDecodeError, DicomError, DicomTooLarge
from sa2va_queue.core.imaging import max_pixels
from sa2va_queue.producer.frame import DICOM_SUFFIXES, Frame, frame_name, split_frame_name  # noqa: F401

# A 15 fps cine of a minute is 900 frames; the limit keeps one file from flooding the queue (and
# memory: every selected frame is decoded before anything is enqueued).
MAX_FRAMES = 2000

# SOP class UID -> short name shown in messages
SUPPORTED_SOP_CLASSES: dict[str, str] = {
    XRayAngiographicImageStorage: "X-Ray Angiographic Image",
    EnhancedXAImageStorage: "Enhanced XA Image",
    SecondaryCaptureImageStorage: "Secondary Capture Image",
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage: "Multi-frame Grayscale Byte Secondary Capture",
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage: "Multi-frame Grayscale Word Secondary Capture",
    MultiFrameTrueColorSecondaryCaptureImageStorage: "Multi-frame True Color Secondary Capture",
}
_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                "PALETTE COLOR")


@dataclass(frozen=True)
class InstanceInfo:
    """What a DICOM instance is, read from its header alone."""

    sop_class_uid: str
    sop_uid: str
    study_uid: str
    series_uid: str
    n_frames: int
    rows: int
    columns: int
    transfer_syntax: str | None


@dataclass
class DicomFrame:
    number: int  # 1-based frame number within the instance
    pixels: np.ndarray  # uint8 (H, W) or (H, W, 3), windowed


def is_dicom_file(path: Path) -> bool:
    """A `.dcm`/`.dicom` suffix, or the `DICM` magic after the 128-byte preamble."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def parse_frame_selection(spec: str) -> Callable[[int], list[int]]:
    """`all`, `every:K` (frames 1, 1+K, ...) or a list `1,5,9` -> function of the frame count giving
    the 1-based frame numbers to use (list entries beyond the count are dropped). Raises ConfigError."""
    text = spec.strip().lower()
    if text in ("", "all"):
        return lambda n: list(range(1, n + 1))
    if text.startswith("every:"):
        try:
            step = int(text[len("every:"):])
        except ValueError:
            step = 0
        if step < 1:
            raise ConfigError(f"--frames {spec!r}: every:K needs a whole K >= 1, e.g. every:5")
        return lambda n: list(range(1, n + 1, step))
    try:
        wanted = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--frames {spec!r}: use all, every:K or a list of frame numbers like 1,5,9") from None
    if not wanted or wanted[0] < 1:
        raise ConfigError(f"--frames {spec!r}: frame numbers start at 1")
    return lambda n: [k for k in wanted if k <= n]


def load_dataset(source: Path | bytes | io.BytesIO, name: str) -> Dataset:
    """Parse a DICOM file (with or without the preamble); raises DicomDecodeError. Pixel data is
    not decoded here."""
    try:
        fh = io.BytesIO(source) if isinstance(source, bytes) else source
        ds = dcmread(fh, force=True)
    except Exception as exc:  # pydicom raises a dozen types (struct.error, NotImplementedError, ...) on damage
        raise DicomDecodeError(f"{name}: cannot parse DICOM ({_first_line(exc)}); the file is corrupt, truncated "
                               "or not DICOM") from None
    if "SOPClassUID" not in ds and "PixelData" not in ds:
        raise DicomDecodeError(f"{name}: not a DICOM dataset (no SOP Class UID, no pixel data); check the file")
    return ds


def inspect_dataset(ds: Dataset, name: str, max_frames: int = MAX_FRAMES) -> InstanceInfo:
    """Header checks: SOP class, UIDs, image geometry, frame limit. Raises DicomError."""
    try:
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class not in SUPPORTED_SOP_CLASSES:
            accepted = ", ".join(SUPPORTED_SOP_CLASSES.values())
            raise DicomError(f"{name}: SOP class {sop_class or 'missing'} is not an image this system segments; "
                             f"accepted: {accepted}")
        missing = [kw for kw in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns",
                                 "BitsAllocated", "PhotometricInterpretation", "PixelData") if kw not in ds]
        if missing:
            raise DicomDecodeError(f"{name}: required attribute(s) {', '.join(missing)} missing; the file is "
                                   "incomplete, export it again from the modality or PACS")
        n_frames = int(ds.get("NumberOfFrames", 1) or 1)
        rows, cols = int(ds.Rows), int(ds.Columns)
        photometric = str(ds.PhotometricInterpretation)
        uids = str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    except DicomError:
        raise
    except Exception as exc:  # elements parse lazily: a damaged one fails on first access, as anything
        raise DicomDecodeError(f"{name}: damaged DICOM header ({_first_line(exc)}); the file is corrupt or "
                               "truncated") from None
    if n_frames < 1 or rows < 1 or cols < 1:
        raise DicomDecodeError(f"{name}: {n_frames} frame(s) of {cols}x{rows} pixels; the header is damaged")
    if rows * cols > max_pixels():  # checked on the header, before any pixel is decoded
        raise DicomTooLarge(f"{name}: frames of {cols}x{rows} pixels exceed the limit of {max_pixels()} pixels; "
                            "raise SA2VA_MAX_PIXELS if such frames are expected")
    if n_frames > max_frames:
        raise DicomTooLarge(f"{name}: {n_frames} frames, more than the limit of {max_frames}; send fewer frames "
                            "or raise the limit (--max-frames)")
    if photometric not in _PHOTOMETRIC:
        raise DicomError(f"{name}: photometric interpretation {photometric} is not supported; "
                         "convert the image to MONOCHROME2 or RGB")
    return InstanceInfo(sop_class, *uids, n_frames, rows, cols, str(tsyntax) if tsyntax else None)


def decode_frames(ds: Dataset, name: str, frames: str = "all", max_frames: int = MAX_FRAMES) -> list[DicomFrame]:
    """The selected frames, windowed to uint8. Raises DicomError / DicomDecodeError / ConfigError."""
    info = inspect_dataset(ds, name, max_frames)
    numbers = parse_frame_selection(frames)(info.n_frames)
    out: list[DicomFrame] = []
    for number in numbers:
        index = number - 1
        try:
            raw = pixel_array(ds, index=index if info.n_frames > 1 else None)
        except Exception as exc:  # decoders raise anything from ValueError to RuntimeError
            syntax = info.transfer_syntax or "unknown transfer syntax"
            raise DicomDecodeError(f"{name}: cannot decode frame {number} ({syntax}: {_first_line(exc)}); the pixel "
                                   "data is truncated or needs a decoder that is not installed") from None
        if raw.shape[:2] != (info.rows, info.columns):
            raise DicomDecodeError(f"{name}: frame {number} decodes to {raw.shape} but the header says "
                                   f"{info.rows}x{info.columns}; the file is damaged")
        try:
            pixels = window_frame(raw, ds, index)
        except Exception as exc:  # damaged rescale / VOI attributes, found only when used
            raise DicomDecodeError(f"{name}: cannot window frame {number} ({_first_line(exc)}); the VOI LUT or "
                                   "rescale attributes are damaged") from None
        out.append(DicomFrame(number, pixels))
    return out


def window_frame(raw: np.ndarray, ds: Dataset, index: int = 0) -> np.ndarray:
    """Stored values of frame `index` (0-based) to uint8 as displayed (see the module docstring)."""
    photometric = str(ds.PhotometricInterpretation)
    if raw.ndim == 3:  # colour: pydicom already converted YBR to RGB
        return raw.astype(np.uint8) if raw.dtype == np.uint8 else _min_max(raw)
    modality = _frame_group(ds, index, "PixelValueTransformationSequence")
    values = apply_modality_lut(raw, modality if modality is not None else ds)
    voi = _frame_group(ds, index, "FrameVOILUTSequence")
    source = voi if voi is not None else ds
    if source.get("VOILUTSequence"):
        lut_bits = int(source.VOILUTSequence[0].LUTDescriptor[2])
        grey = apply_voi_lut(values, source, prefer_lut=True).astype(np.float64) * (255.0 / (2**lut_bits - 1))
        out = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
    elif "WindowCenter" in source and "WindowWidth" in source:
        # window into an 8-bit unsigned range directly: the output range of the windowing formula is
        # the one declared here, whatever the stored bit depth
        view = Dataset()
        view.PhotometricInterpretation = "MONOCHROME2"
        view.BitsStored, view.PixelRepresentation = 8, 0
        view.WindowCenter, view.WindowWidth = source.WindowCenter, source.WindowWidth
        if "VOILUTFunction" in source:
            view.VOILUTFunction = source.VOILUTFunction
        out = np.clip(np.rint(apply_voi_lut(values, view, prefer_lut=False)), 0, 255).astype(np.uint8)
    else:
        out = _min_max(values)
    return 255 - out if photometric == "MONOCHROME1" else out


def frames_from_dataset(ds: Dataset, name: str, path: Path, frames: str = "all",
                        max_frames: int = MAX_FRAMES) -> list[Frame]:
    """One producer Frame per selected frame: PNG bytes of the windowed frame plus its UIDs in `meta`."""
    info = inspect_dataset(ds, name, max_frames)
    result: list[Frame] = []
    for decoded in decode_frames(ds, name, frames, max_frames):
        pixels = decoded.pixels
        buf = io.BytesIO()
        # fastest zlib level: ~4x quicker than the default for ~17 % more bytes, still lossless
        Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
        meta = {"study_uid": info.study_uid, "series_uid": info.series_uid, "sop_uid": info.sop_uid,
                "frame": decoded.number, "sop_class_uid": info.sop_class_uid}  # stored in jobs.meta
        result.append(Frame(name=frame_name(name, decoded.number), path=path, data=buf.getvalue(),
                            width=int(pixels.shape[1]), height=int(pixels.shape[0]),
                            mode="L" if pixels.ndim == 2 else "RGB", media_type="image/png", gt_mask=None,
                            gt_source=None, error=None, meta=meta))
    return result


def read_dicom_frames(path: Path, base: Path, frames: str = "all", max_frames: int = MAX_FRAMES) -> list[Frame]:
    """Frames of the DICOM file `path`, named relative to `base`. Raises DicomError (one line)."""
    path, base = Path(path), Path(base)
    try:
        name = path.relative_to(base).as_posix()
    except ValueError:
        name = path.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DicomDecodeError(f"{name}: cannot read the file ({exc.strerror or exc}); check its permissions") from None
    return frames_from_dataset(load_dataset(data, name), name, path, frames, max_frames)


def scan_dicom_file(path: Path, base: Path, frames: str = "all", max_frames: int = MAX_FRAMES) -> list[Frame]:
    """`read_dicom_frames` for the dataset scan, which never raises on a user's file: a file that
    cannot be used becomes one Frame named after the file with `error` set (a failed job, counted)."""
    try:
        return read_dicom_frames(path, base, frames, max_frames)
    except DicomError as exc:
        try:
            name = Path(path).relative_to(base).as_posix()
        except ValueError:
            name = Path(path).name
        return [Frame(name=name, path=Path(path), data=b"", width=None, height=None, mode=None, media_type=None,
                      gt_mask=None, gt_source=None, error=str(exc))]


def _frame_group(ds: Dataset, index: int, sequence: str) -> Dataset | None:
    """The item of a functional-group macro for frame `index`: per-frame first, then shared."""
    for groups, i in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is not None and len(items) > i:
            macro = items[i].get(sequence)
            if macro:
                return macro[0]
    return None


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = np.asarray(arr, np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.rint((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
