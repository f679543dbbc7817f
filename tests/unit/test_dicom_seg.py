"""The DICOM Segmentation writer: content, references, read-back by pydicom/highdicom and dciodvfy."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from sa2va_queue.pacs.seg import build_seg, seg_uids, to_bytes, validate_seg
from sa2va_queue.producer.dicom_synth import synth_cine, xa_dataset


@pytest.fixture(scope="module")
def cine():
    return synth_cine(3, seed=4, size=64)


def test_multiframe_seg_content_and_references(cine) -> None:
    source = xa_dataset(cine.frames, seed=4)
    masks = {1: cine.masks[0], 3: cine.masks[2]}
    data = to_bytes(build_seg(source, masks, model_version="vesselness:abc", algorithm_name="vesselness"))
    validate_seg(data, source, masks)
    ds = dcmread(io.BytesIO(data))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY" and ds.NumberOfFrames == 2
    assert (ds.PatientID, ds.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    segment = ds.SegmentSequence[0]
    assert segment.SegmentLabel == "Blood vessel" and segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "59820001"
    assert segment.SegmentationAlgorithmIdentificationSequence[0].AlgorithmVersion == "vesselness:abc"
    refs = [f.DerivationImageSequence[0].SourceImageSequence[0] for f in ds.PerFrameFunctionalGroupsSequence]
    assert [(r.ReferencedSOPInstanceUID, r.ReferencedFrameNumber) for r in refs] == [
        (source.SOPInstanceUID, 1), (source.SOPInstanceUID, 3)]
    np.testing.assert_array_equal(ds.pixel_array.astype(bool), np.stack([cine.masks[0], cine.masks[2]]))


def test_uids_are_stable_per_source_and_model(cine) -> None:
    source = xa_dataset(cine.frames[:1], seed=4)
    assert seg_uids(source, "m1") == seg_uids(source, "m1")
    assert seg_uids(source, "m1")[1] != seg_uids(source, "m2")[1]
    assert build_seg(source, {1: cine.masks[0]}, model_version="m1", algorithm_name="x").SOPInstanceUID == seg_uids(source, "m1")[1]


def test_validation_catches_a_wrong_frame(cine) -> None:
    source = xa_dataset(cine.frames, seed=4)
    data = to_bytes(build_seg(source, {2: cine.masks[1]}, model_version="m", algorithm_name="x"))
    with pytest.raises(ValueError, match="frame 2 differs"):
        validate_seg(data, source, {2: ~cine.masks[1]})
    with pytest.raises(ValueError, match="outside the source"):
        build_seg(source, {4: cine.masks[0]}, model_version="m", algorithm_name="x")
    with pytest.raises(ValueError, match="is \\(32, 32\\)"):
        build_seg(source, {1: np.zeros((32, 32), bool)}, model_version="m", algorithm_name="x")


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
@pytest.mark.parametrize("n_frames", [1, 3])
def test_dciodvfy_finds_no_error(tmp_path: Path, cine, n_frames: int) -> None:
    source = xa_dataset(cine.frames[:n_frames], seed=4)
    path = tmp_path / "seg.dcm"
    path.write_bytes(to_bytes(build_seg(source, {k + 1: cine.masks[k] for k in range(n_frames)},
                                        model_version="m", algorithm_name="x")))
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
    report = out.stdout + out.stderr
    assert "Segmentation" in report
    assert "Error" not in report, report


@pytest.mark.parametrize("n_frames", [1, 3])
def test_overlay_secondary_capture(tmp_path: Path, cine, n_frames: int) -> None:
    from sa2va_queue.pacs.overlay import COLOUR, build_overlay
    from sa2va_queue.producer.dicom import decode_frames

    source = xa_dataset(cine.frames[:n_frames], seed=4)
    masks = {k + 1: cine.masks[k] for k in range(n_frames)}
    data = to_bytes(build_overlay(source, masks, model_version="m", algorithm_name="vesselness"))
    ds = dcmread(io.BytesIO(data))
    assert ds.PhotometricInterpretation == "RGB" and ds.BurnedInAnnotation == "YES"
    assert ds.SOPClassUID.endswith("7.4" if n_frames > 1 else "7")
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    rgb = ds.pixel_array.reshape(n_frames, 64, 64, 3).astype(int)
    grey = np.stack([f.pixels for f in decode_frames(source, "s")]).astype(int)
    vessel, background = cine.masks[:n_frames], ~cine.masks[:n_frames]
    assert (rgb[background] == grey[background][:, None]).all()  # untouched outside the mask
    expected = np.rint(0.5 * grey[vessel][:, None] + 0.5 * COLOUR[None, :])
    assert np.abs(rgb[vessel] - expected).max() <= 1
    if shutil.which("dciodvfy"):
        path = tmp_path / "overlay.dcm"
        path.write_bytes(data)
        report = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        assert "Error" not in report.stdout + report.stderr, report.stdout + report.stderr
