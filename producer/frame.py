"""The producer's unit: one frame to segment, and how frames cut out of a file are named.

A DICOM cine or a multi-page TIFF gives one frame per image in it, named `<file>#frame_<6 digits>`
(1-based), so every frame is its own job and nothing is cut silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DICOM_SUFFIXES = (".dcm", ".dicom")
FRAME_MARK = "#frame_"


def frame_name(source: str, number: int) -> str:
    """The job name of frame `number` (1-based) of the file named `source`."""
    return f"{source}{FRAME_MARK}{number:06d}"


def split_frame_name(name: str) -> tuple[str, int] | None:
    """(source file name, frame number) of a frame cut out of a file; None for other frames."""
    source, mark, number = name.rpartition(FRAME_MARK)
    return (source, int(number)) if mark and number.isdigit() else None


@dataclass
class Frame:
    name: str  # path relative to the dataset root, POSIX separators
    path: Path
    data: bytes  # raw file bytes (as found)
    width: int | None
    height: int | None
    mode: str | None
    media_type: str | None
    gt_mask: np.ndarray | None  # bool (H, W) when ground truth exists and is usable
    gt_source: str | None  # file the ground truth came from
    error: str | None  # set when the frame cannot be segmented; names the file and what to do
    gt_mask_png: bytes | None = None  # the mask file's own bytes when it was one (saves a re-encode)
    meta: dict | None = None  # where the frame came from beyond its name (DICOM UIDs, frame number)
