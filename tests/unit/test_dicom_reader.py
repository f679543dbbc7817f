"""The DICOM reader: frames, windowing, frame selection, UIDs, and one-line errors for bad files."""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import BasicTextSRStorage, EnhancedXAImageStorage

from sa2va_queue.core.exceptions import ConfigError, DicomDecodeError, DicomError, DicomTooLarge
from sa2va_queue.producer.dicom import (
    decode_frames,
    is_dicom_file,
    load_dataset,
    parse_frame_selection,
    read_dicom_frames,
    scan_dicom_file,
)
from sa2va_queue.producer.dicom_synth import study_uids, synth_cine, to_jpeg_baseline, write_xa_study, xa_dataset


def _png(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.data)))


def _min_max(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    return np.rint((a - a.min()) * (255.0 / (a.max() - a.min()))).astype(np.uint8)


@pytest.fixture(scope="module")
def cine() -> np.ndarray:
    return synth_cine(4, seed=1, size=128).frames


def test_multiframe_cine_gives_one_frame_per_frame_with_uids(tmp_path: Path, cine: np.ndarray) -> None:
    (path,) = write_xa_study(tmp_path / "study", 4, seed=1, size=128)
    frames = read_dicom_frames(path, tmp_path)
    assert [f.name for f in frames] == [f"study/{path.name}#frame_{k:06d}" for k in range(1, 5)]
    study, series = study_uids(1)
    for k, frame in enumerate(frames):
        assert frame.media_type == "image/png" and frame.mode == "L" and (frame.width, frame.height) == (128, 128)
        assert frame.meta == {"study_uid": study, "series_uid": series, "sop_uid": frame.meta["sop_uid"],
                              "frame": k + 1, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.12.1"}
        # no VOI module: the frame's own min to max, losslessly through the PNG
        np.testing.assert_array_equal(_png(frame), _min_max(cine[k]))
    assert len({f.meta["sop_uid"] for f in frames}) == 1


def test_single_frame_instances_and_preamble_detection(tmp_path: Path) -> None:
    paths = write_xa_study(tmp_path, 3, seed=2, multiframe=False, size=64)
    assert len(paths) == 3
    renamed = paths[0].with_suffix("")  # no .dcm: recognised by the DICM magic
    paths[0].rename(renamed)
    assert is_dicom_file(renamed) and not is_dicom_file(tmp_path / "nothing.png")
    sops = {read_dicom_frames(p, tmp_path)[0].meta["sop_uid"] for p in [renamed, *paths[1:]]}
    assert len(sops) == 3


def test_window_centre_width_is_applied_to_12_bit_frames(cine: np.ndarray) -> None:
    # 8-bit values v stored as v << 4 in 12 bits; a narrow window over the middle clips both ends
    ds = xa_dataset(cine[:2], bits_stored=12, window=(2048, 1024))
    out = decode_frames(ds, "w.dcm")[0].pixels
    stored = cine[0].astype(np.float64) * 16
    expected = np.clip(np.rint(((stored - 2047.5) / 1023 + 0.5) * 255), 0, 255)  # PS3.3 C.11.2.1.2.1
    np.testing.assert_array_equal(out, expected.astype(np.uint8))
    assert out.min() == 0 and out.max() == 255  # clipped: not a min-max stretch


def test_monochrome1_is_inverted(cine: np.ndarray) -> None:
    ds = xa_dataset(cine[:1])
    ds.PhotometricInterpretation = "MONOCHROME1"
    np.testing.assert_array_equal(decode_frames(ds, "m1.dcm")[0].pixels, 255 - _min_max(cine[0]))


def test_enhanced_xa_per_frame_voi(cine: np.ndarray) -> None:
    ds = xa_dataset(cine[:2], bits_stored=12)
    ds.SOPClassUID = EnhancedXAImageStorage
    ds.PerFrameFunctionalGroupsSequence = Sequence()
    for centre in (1024, 3072):
        voi = Dataset()
        voi.WindowCenter, voi.WindowWidth = centre, 2048
        item = Dataset()
        item.FrameVOILUTSequence = Sequence([voi])
        ds.PerFrameFunctionalGroupsSequence.append(item)
    first, second = (f.pixels for f in decode_frames(ds, "exa.dcm"))
    stored = cine[:2].astype(np.float64) * 16
    for out, data, centre in ((first, stored[0], 1024), (second, stored[1], 3072)):
        expected = np.clip(np.rint(((data - (centre - 0.5)) / 2047 + 0.5) * 255), 0, 255)
        np.testing.assert_array_equal(out, expected.astype(np.uint8))


def test_jpeg_baseline_is_decoded(cine: np.ndarray) -> None:
    ds = to_jpeg_baseline(xa_dataset(cine[:3]), quality=95)
    ds = load_dataset(_bytes(ds), "jpeg.dcm")
    out = decode_frames(ds, "jpeg.dcm", frames="2")
    assert [f.number for f in out] == [2]
    # lossy, but close to the source frame (then min-max stretched)
    assert np.abs(out[0].pixels.astype(int) - _min_max(cine[1]).astype(int)).mean() < 3


@pytest.mark.skipif(shutil.which("dcmcjpeg") is None, reason="dcmcjpeg (dcmtk) not installed")
def test_jpeg_lossless_from_dcmcjpeg_is_decoded_exactly(tmp_path: Path, cine: np.ndarray) -> None:
    (path,) = write_xa_study(tmp_path, 3, seed=1, size=128)
    lossless = tmp_path / "lossless.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(path), str(lossless)], check=True, capture_output=True)
    ds = load_dataset(lossless.read_bytes(), "lossless.dcm")
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    plain = [f.pixels for f in decode_frames(load_dataset(path.read_bytes(), "p"), "p")]
    assert all(np.array_equal(a, b.pixels) for a, b in zip(plain, decode_frames(ds, "lossless.dcm")))


def test_frame_selection() -> None:
    assert parse_frame_selection("all")(3) == [1, 2, 3]
    assert parse_frame_selection("every:4")(10) == [1, 5, 9]
    assert parse_frame_selection("9,1,5,40")(10) == [1, 5, 9]
    for bad in ("every:0", "every:x", "0,2", "a,b"):
        with pytest.raises(ConfigError, match="--frames"):
            parse_frame_selection(bad)


def test_truncated_file(tmp_path: Path, cine: np.ndarray) -> None:
    (path,) = write_xa_study(tmp_path, 2, seed=1, size=128)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DicomDecodeError) as err:
        read_dicom_frames(path, tmp_path)
    assert path.name in str(err.value) and "\n" not in str(err.value)


def test_not_dicom_and_non_image_sop_class(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"hello, not dicom at all")
    with pytest.raises(DicomDecodeError, match="junk.dcm"):
        read_dicom_frames(junk, tmp_path)
    ds = xa_dataset(np.zeros((1, 8, 8), np.uint8))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    with pytest.raises(DicomError, match="not an image this system segments"):
        decode_frames(ds, "sr.dcm")


def test_frame_count_limit(cine: np.ndarray) -> None:
    ds = xa_dataset(cine[:3])
    with pytest.raises(DicomTooLarge, match="3 frames, more than the limit of 2"):
        decode_frames(ds, "big.dcm", max_frames=2)
    ds.NumberOfFrames = 10**6  # a header that lies about its frame count
    with pytest.raises(DicomTooLarge):
        decode_frames(ds, "huge.dcm")
    ds.NumberOfFrames, ds.Rows, ds.Columns = 1, 65535, 65535  # 4 GiB a frame, declared in the header
    with pytest.raises(DicomTooLarge, match="SA2VA_MAX_PIXELS"):
        decode_frames(ds, "wide.dcm")


def _bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_scan_variant_turns_a_bad_file_into_a_failed_frame(tmp_path: Path) -> None:
    (good,) = write_xa_study(tmp_path / "d", 2, seed=6, size=32)
    bad = tmp_path / "d" / "bad.dcm"
    bad.write_bytes(b"DICM but not really")
    assert [f.meta["frame"] for f in scan_dicom_file(good, tmp_path)] == [1, 2]
    (failed,) = scan_dicom_file(bad, tmp_path)
    assert failed.name == "d/bad.dcm" and failed.error.startswith("d/bad.dcm: ") and failed.data == b""


def test_damaged_files_only_ever_raise_dicom_errors() -> None:
    """Seeded mutations (flipped bytes in the header, cuts, overwritten words) of uncompressed,
    JPEG and 12-bit windowed instances: the reader returns frames or raises DicomError, nothing else."""
    import warnings

    frames = synth_cine(2, seed=1, size=32).frames
    bases = [_bytes(xa_dataset(frames)), _bytes(to_jpeg_baseline(xa_dataset(frames))),
             _bytes(xa_dataset(frames, bits_stored=12, window=(2000, 1000)))]
    rng = np.random.default_rng(2026)
    outcomes = {"frames": 0, "DicomError": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about every damaged value it still reads
        for i in range(1500):
            data = bytearray(bases[i % 3])
            kind = i % 3
            if kind == 0:
                for _ in range(int(rng.integers(1, 8))):
                    data[int(rng.integers(0, 1500))] = int(rng.integers(0, 256))
            elif kind == 1:
                data = data[: int(rng.integers(0, len(data)))]
            else:
                at = int(rng.integers(0, len(data)))
                data[at:at + 4] = rng.integers(0, 256, 4, dtype=np.uint8).tobytes()
            try:
                decode_frames(load_dataset(bytes(data), "x.dcm"), "x.dcm")
                outcomes["frames"] += 1
            except DicomError as exc:
                assert str(exc).startswith("x.dcm: ") and "\n" not in str(exc)
                outcomes["DicomError"] += 1
    assert outcomes["frames"] > 100 and outcomes["DicomError"] > 100  # both paths were exercised
