"""`sa2va-queue export RUN OUT --format png|npy|nifti|dicom-seg|dicom-overlay`: results as files.

One file per frame (and per stored probability map), named after the frame with its patient
identifier replaced by its keyed pseudonym (`report.collect` gives `display_name`): `<folder>/<stem>_mask.<ext>` and
`<stem>_prob.<ext>`; frames of DICOM files (`x.dcm#frame_000003`) become `x_frame_000003_*`.
`dicom-seg` writes one DICOM Segmentation per source DICOM file, `<stem>_seg.dcm`, built from the
original file under the run's dataset folder (see `sa2va_queue.pacs.seg`); `dicom-overlay` one
colour overlay secondary capture per source file, `<stem>_overlay.dcm`, for viewers without SEG
support (`sa2va_queue.pacs.overlay`).

Formats: png (mask 1-bit, probability 16-bit, the stored bytes as they are), npy (bool mask,
float32 probability in [0, 1]), nifti (`.nii.gz`, one 2-D image per frame, axes x = column,
y = row, identity affine: angiography frames carry no patient-space geometry).
"""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from sqlalchemy.orm import Session

from sa2va_queue.core.exceptions import ConfigError, DicomError
from sa2va_queue.core.imaging import decode_mask, decode_probability
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.report.collect import load_run

FORMATS = ("png", "npy", "nifti", "dicom-seg", "dicom-overlay")


@dataclass
class ExportSummary:
    written: list[Path] = field(default_factory=list)
    without_result: int = 0  # frames with no stored mask (failed, or not finished)
    problems: list[str] = field(default_factory=list)  # one line each, pseudonymised


def output_stem(display_name: str) -> PurePosixPath:
    """A relative file stem for a frame name: suffix dropped, `#` of DICOM frames to `_`, no `..`."""
    source, mark, frag = display_name.partition("#")
    path = PurePosixPath(source)
    stem = path.name[: -len(path.suffix)] if path.suffix else path.name
    if mark:
        stem = f"{stem}_{frag}"
    parts = [p for p in path.parent.parts if p not in ("", ".", "..", "/")]
    return PurePosixPath(*parts, stem or "frame")


def export_run(session: Session, blobs: BlobStore, run_name: str, out: Path, fmt: str, *,
               pseudonymizer: Pseudonymizer) -> ExportSummary:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    run = load_run(session, run_name, pseudonymizer=pseudonymizer)
    out = Path(out)
    summary = ExportSummary()
    if fmt.startswith("dicom-"):
        _export_dicom(session, blobs, run, out, summary, overlay=fmt == "dicom-overlay")
        return summary
    for rec in run.frames:
        if rec.mask_sha256 is None:
            summary.without_result += 1
            continue
        stem = out / output_stem(rec.display_name)
        mask_png = blobs.get(session, rec.mask_sha256)
        prob_png = blobs.get(session, rec.prob_sha256) if rec.prob_sha256 else None
        if fmt == "png":
            summary.written.append(_write(stem, "_mask.png", mask_png))
            if prob_png is not None:
                summary.written.append(_write(stem, "_prob.png", prob_png))
            continue
        mask = decode_mask(mask_png, f"mask of {rec.display_name}")
        prob = decode_probability(prob_png) if prob_png is not None else None
        if fmt == "npy":
            summary.written.append(_write(stem, "_mask.npy", _npy(mask)))
            if prob is not None:
                summary.written.append(_write(stem, "_prob.npy", _npy(prob.astype(np.float32))))
        else:
            summary.written.append(_write(stem, "_mask.nii.gz", _nifti(mask.astype(np.uint8))))
            if prob is not None:
                summary.written.append(_write(stem, "_prob.nii.gz", _nifti(prob.astype(np.float32))))
    return summary


def _export_dicom(session: Session, blobs: BlobStore, run, out: Path, summary: ExportSummary, *,
                  overlay: bool) -> None:
    from sa2va_queue.pacs.results import (
        build_instance_overlay,
        build_instance_seg,
        group_by_instance,
        model_version_label,
        read_source_header,
    )

    instances, summary.without_result = group_by_instance(run.frames)
    version = model_version_label(run.model_version)
    backend = run.model_version.backend if run.model_version else run.model_spec.split(":")[0].split("?")[0]
    root = Path(run.dataset)
    root = root.parent if root.is_file() else root
    what, suffix = ("overlay", "_overlay.dcm") if overlay else ("SEG", "_seg.dcm")
    for instance in instances:
        path = root / instance.source
        if not path.is_file():
            summary.problems.append(f"{instance.display_source}: source DICOM file not found under the run's "
                                    f"dataset folder; no {what} written")
            continue
        try:
            source = read_source_header(path, instance.display_source, pixels=overlay)
            build = build_instance_overlay if overlay else build_instance_seg
            result = build(session, blobs, instance, source, model_version=version, algorithm_name=backend)
        except (DicomError, ValueError) as exc:
            summary.problems.append(str(exc).replace(instance.source, instance.display_source))
            continue
        summary.written.append(_write(out / output_stem(instance.display_source), suffix, result.data))


def _write(stem: Path, suffix: str, data: bytes) -> Path:
    """Atomic write (temporary file in the same folder, then rename): no half-written results."""
    path = stem.with_name(stem.name + suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".export-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _nifti(arr: np.ndarray) -> bytes:
    import gzip

    import nibabel as nib

    image = nib.Nifti1Image(np.ascontiguousarray(arr.T[:, :, np.newaxis]), affine=np.eye(4))
    return gzip.compress(image.to_bytes(), mtime=0)  # .nii.gz; mtime 0: same result, same bytes
