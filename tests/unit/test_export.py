"""`export`: masks and probability maps as png / npy / nifti files, and DICOM SEG per DICOM source."""

from __future__ import annotations

import gzip
import hashlib
import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from pydicom import dcmread

from sa2va_queue.cli.export import export_run, output_stem
from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.imaging import encode_mask, encode_probability
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import Blob, Image, Job, JobStatus, ModelVersion, Prediction, Run
from sa2va_queue.db.session import dispose_all, get_sessionmaker, upgrade_schema
from sa2va_queue.producer.dicom import frame_name, read_dicom_frames
from sa2va_queue.producer.dicom_synth import synth_cine, write_xa_study

PATIENT = "SECRET01"
PSEUDO = Pseudonymizer(b"k" * 32)
JPG = f"{PATIENT}__1-4_1_0A0B0C0D_frame_000007.jpg"


def _blob(session, data: bytes, media_type: str = "image/png") -> str:
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), media_type=media_type, data=data))
        session.flush()
    return digest


@pytest.fixture
def db(tmp_path: Path):
    """A run with a plain JPEG frame, two frames of a DICOM cine (one failed) in a dataset folder."""
    dataset = tmp_path / "dataset"
    (cine_path,) = write_xa_study(dataset / "cath", 3, seed=5, size=64)
    cine = synth_cine(3, seed=5, size=64)
    url = f"sqlite:///{tmp_path}/x.sqlite"
    upgrade_schema(url)
    session = get_sessionmaker(url)()
    mv = ModelVersion(key=uuid.uuid4().hex, backend="vesselness", params={"sigma": 2}, checkpoint_hash=None,
                      code_version="abc1234")
    run = Run(name="r1", model_spec="vesselness", dataset=str(dataset), prompt="p", threshold=0.5)
    session.add_all([mv, run])
    session.flush()
    dicom_frames = {f.name: f for f in read_dicom_frames(cine_path, dataset)}
    items = [(JPG, np.eye(64, dtype=bool), np.eye(64, dtype=np.float32) * 0.8, "done")]
    for k in (1, 3):
        items.append((frame_name("cath/" + cine_path.name, k), cine.masks[k - 1], None, "done"))
    items.append((frame_name("cath/" + cine_path.name, 2), None, None, "failed"))
    for name, mask, prob, status in items:
        data = dicom_frames[name].data if name in dicom_frames else encode_mask(np.zeros((64, 64), bool))
        image = Image(sha256=_blob(session, data), width=64, height=64, mode="L", media_type="image/png")
        session.add(image)
        session.flush()
        job = Job(id=str(uuid.uuid4()), run_id=run.id, name=name, image_id=image.id, prompt="p", queue="q",
                  status=JobStatus(status), attempts=1)
        session.add(job)
        session.flush()
        if mask is not None:
            session.add(Prediction(job_id=job.id, model_version_id=mv.id, threshold=0.5, batch_size=1,
                                   preprocess_ms=1.0, compute_ms=1.0, mask_sha256=_blob(session, encode_mask(mask)),
                                   prob_sha256=_blob(session, encode_probability(prob)) if prob is not None else None))
    session.commit()
    yield session, cine, cine_path
    session.close()
    dispose_all()


def test_output_stem() -> None:
    assert str(output_stem("a/b/x.dcm#frame_000003")) == "a/b/x_frame_000003"
    assert str(output_stem("../../etc/passwd.png")) == "etc/passwd"
    assert str(output_stem("p-1234__seq_frame_000001.jpg")) == "p-1234__seq_frame_000001"


def test_png_export_is_pseudonymised_and_bit_exact(db, tmp_path: Path) -> None:
    session, cine, cine_path = db
    out = tmp_path / "out"
    summary = export_run(session, BlobStore(), "r1", out, "png", pseudonymizer=PSEUDO)
    names = sorted(p.relative_to(out).as_posix() for p in summary.written)
    stem = cine_path.stem
    assert PATIENT not in " ".join(names) and summary.without_result == 1
    assert f"cath/{stem}_frame_000001_mask.png" in names and f"cath/{stem}_frame_000003_mask.png" in names
    assert sum(n.endswith("_prob.png") for n in names) == 1
    mask3 = np.asarray(PILImage.open(out / f"cath/{stem}_frame_000003_mask.png"))
    np.testing.assert_array_equal(mask3 > 0, cine.masks[2])


def test_npy_and_nifti(db, tmp_path: Path) -> None:
    import nibabel as nib

    session, cine, cine_path = db
    npy = export_run(session, BlobStore(), "r1", tmp_path / "npy", "npy", pseudonymizer=PSEUDO)
    prob = np.load(next(p for p in npy.written if p.name.endswith("_prob.npy")))
    assert prob.dtype == np.float32 and abs(float(prob.max()) - 0.8) < 1e-4
    np.testing.assert_array_equal(np.load(next(p for p in npy.written if "frame_000001_mask" in p.name)), cine.masks[0])
    nii = export_run(session, BlobStore(), "r1", tmp_path / "nii", "nifti", pseudonymizer=PSEUDO)
    path = next(p for p in nii.written if "frame_000003_mask" in p.name)
    assert path.name.endswith(".nii.gz")
    img = nib.Nifti1Image.from_bytes(gzip.decompress(path.read_bytes()))
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0].T.astype(bool), cine.masks[2])


def test_dicom_seg_export_references_the_source(db, tmp_path: Path) -> None:
    session, cine, cine_path = db
    summary = export_run(session, BlobStore(), "r1", tmp_path / "seg", "dicom-seg", pseudonymizer=PSEUDO)
    assert summary.problems == [] and summary.without_result == 2  # the JPEG frame and the failed frame
    (path,) = summary.written
    assert path.name == f"{cine_path.stem}_seg.dcm"
    seg = dcmread(path)
    source = dcmread(cine_path, stop_before_pixels=True)
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in seg.PerFrameFunctionalGroupsSequence]
    assert [(r.ReferencedSOPInstanceUID, int(r.ReferencedFrameNumber)) for r in refs] == [
        (source.SOPInstanceUID, 1), (source.SOPInstanceUID, 3)]
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion.startswith("vesselness")
    np.testing.assert_array_equal(seg.pixel_array.astype(bool), cine.masks[[0, 2]])


def test_bad_format_and_missing_source(db, tmp_path: Path) -> None:
    session, _, cine_path = db
    with pytest.raises(ConfigError, match="--format 'tiff'"):
        export_run(session, BlobStore(), "r1", tmp_path, "tiff", pseudonymizer=PSEUDO)
    cine_path.unlink()
    summary = export_run(session, BlobStore(), "r1", tmp_path / "seg", "dicom-seg", pseudonymizer=PSEUDO)
    assert summary.written == [] and "source DICOM file not found" in summary.problems[0]


def test_dicom_overlay_export(db, tmp_path: Path) -> None:
    session, cine, cine_path = db
    summary = export_run(session, BlobStore(), "r1", tmp_path / "ov", "dicom-overlay", pseudonymizer=PSEUDO)
    (path,) = summary.written
    assert path.name == f"{cine_path.stem}_overlay.dcm"
    ds = dcmread(path)
    assert ds.NumberOfFrames == 2 and list(ds.SourceImageSequence[0].ReferencedFrameNumber) == [1, 3]
