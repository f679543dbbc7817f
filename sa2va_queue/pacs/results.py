"""From stored predictions to DICOM Segmentations, one per source DICOM instance.

Frames that came from DICOM files are named `<file>#frame_<N>` by the reader
(`producer.dicom.frame_name`); the masks of one file's frames form that file's SEG. The source
header is read again from the file (the pixel data is not needed): the SEG copies its patient and
study attributes and references its SOP Instance UID and frame numbers.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy.orm import Session

from sa2va_queue.core.exceptions import DicomDecodeError
from sa2va_queue.core.imaging import decode_mask
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import find_run, run_masks
from sa2va_queue.db.models import JobStatus, ModelVersion
from sa2va_queue.pacs.seg import build_seg, to_bytes, validate_seg
from sa2va_queue.producer.dicom import split_frame_name


class FrameRecord(Protocol):
    """What SEG building needs of a frame: report.collect.FrameRecord has it, so has FrameRow."""

    job_id: str
    name: str
    display_name: str
    status: str
    mask_sha256: str | None


@dataclass
class FrameRow:
    job_id: str
    name: str
    display_name: str
    status: str
    mask_sha256: str | None


@dataclass
class RunFrames:
    """One run's frames for the result pump: a few columns, no report machinery."""

    id: int
    name: str
    model_spec: str
    dataset: str
    model_version: Any  # ModelVersion row of the most predictions, or None
    model_version_id: int | None
    frames: list[FrameRow]


def load_run_frames(session: Session, run_name: str) -> RunFrames:
    run = find_run(session, run_name)
    rows = run_masks(session, run.id)
    versions = [r.model_version_id for r in rows if r.model_version_id is not None]
    version_id = max(set(versions), key=versions.count) if versions else None
    frames = [FrameRow(r.id, r.name, r.name, r.status.value if isinstance(r.status, JobStatus) else str(r.status),
                       r.mask_sha256) for r in rows]
    return RunFrames(run.id, run.name, run.model_spec, run.dataset,
                     session.get(ModelVersion, version_id) if version_id is not None else None, version_id, frames)


@dataclass
class InstanceFrames:
    """The segmented frames of one source DICOM file."""

    source: str  # file name relative to the run's dataset folder (may hold identifiers: not for logs)
    display_source: str  # the same, pseudonymised
    frames: dict[int, FrameRecord] = field(default_factory=dict)  # frame number -> record

    @property
    def job_ids(self) -> list[str]:
        return [rec.job_id for _, rec in sorted(self.frames.items())]


@dataclass
class SegResult:
    data: bytes
    sop_instance_uid: str
    series_instance_uid: str
    source_sop_instance_uid: str
    frame_numbers: list[int]


def group_by_instance(frames: Iterable[FrameRecord]) -> tuple[list[InstanceFrames], int]:
    """DICOM frames with a stored mask, grouped by source file; and how many frames were left out
    (not from DICOM, or without a mask: failed or not done yet)."""
    groups: dict[str, InstanceFrames] = {}
    left_out = 0
    for rec in frames:
        parsed = split_frame_name(rec.name)
        if parsed is None or rec.mask_sha256 is None:
            left_out += 1
            continue
        source, number = parsed
        display = split_frame_name(rec.display_name)
        group = groups.setdefault(source, InstanceFrames(source, display[0] if display else source))
        group.frames[number] = rec
    return [groups[k] for k in sorted(groups)], left_out


def model_version_label(info: Any) -> str:
    """Backend, checkpoint hash (or parameters) and code version, short enough for a DICOM LO
    (`info`: a ModelVersion row or report.collect.ModelVersionInfo)."""
    if info is None:
        return "unknown"
    weights = (info.checkpoint_hash or "")[:12] or ",".join(f"{k}={v}" for k, v in sorted(info.params.items()))
    return f"{info.backend} {weights} code {info.code_version[:12]}".replace("  ", " ")[:64]


def read_source_header(path: Path, shown: str, *, pixels: bool = False) -> Dataset:
    """The source instance (header only unless `pixels`); raises DicomDecodeError."""
    try:
        return dcmread(path, stop_before_pixels=not pixels, force=True)
    except (InvalidDicomError, OSError, EOFError, ValueError) as exc:
        raise DicomDecodeError(f"{shown}: cannot read the source DICOM file ({exc}); results need the "
                               "original file under the run's dataset folder") from None


def _masks(session: Session, blobs: BlobStore, instance: InstanceFrames, source: Dataset) -> dict[int, np.ndarray]:
    rows, cols = int(source.Rows), int(source.Columns)
    masks: dict[int, np.ndarray] = {}
    for number, rec in sorted(instance.frames.items()):
        assert rec.mask_sha256 is not None
        masks[number] = decode_mask(blobs.get(session, rec.mask_sha256), f"mask of {rec.display_name}", shape=(rows, cols))
    return masks


def build_instance_seg(session: Session, blobs: BlobStore, instance: InstanceFrames, source: Dataset, *,
                       model_version: str, algorithm_name: str) -> SegResult:
    """Decode the instance's masks, build its SEG and check it by reading it back."""
    masks = _masks(session, blobs, instance, source)
    seg = build_seg(source, masks, model_version=model_version, algorithm_name=algorithm_name)
    data = to_bytes(seg)
    validate_seg(data, source, masks)
    return SegResult(data, str(seg.SOPInstanceUID), str(seg.SeriesInstanceUID), str(source.SOPInstanceUID),
                     sorted(masks))


def build_instance_overlay(session: Session, blobs: BlobStore, instance: InstanceFrames, source: Dataset, *,
                           model_version: str, algorithm_name: str) -> SegResult:
    """The colour overlay secondary capture of the instance (`source` read with its pixel data)."""
    from sa2va_queue.pacs.overlay import build_overlay

    masks = _masks(session, blobs, instance, source)
    ds = build_overlay(source, masks, model_version=model_version, algorithm_name=algorithm_name)
    return SegResult(to_bytes(ds), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID), str(source.SOPInstanceUID),
                     sorted(masks))


def instance_groups_by_source(frames: Iterable[FrameRecord]) -> dict[str, list[FrameRecord]]:
    """All frames (any state) per DICOM source file: used to tell when an instance is complete."""
    out: dict[str, list[FrameRecord]] = defaultdict(list)
    for rec in frames:
        parsed = split_frame_name(rec.name)
        if parsed is not None:
            out[parsed[0]].append(rec)
    return dict(out)
