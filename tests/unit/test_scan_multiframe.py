"""Files holding several frames become one job per frame: multi-page TIFF and DICOM cine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from sa2va_queue.core.imaging import decode_image
from sa2va_queue.producer.dataset import scan_dataset
from sa2va_queue.producer.dicom_synth import write_xa_study


def test_a_three_page_tiff_gives_three_frames(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)) for _ in range(3)]
    pages[0].save(tmp_path / "cine.tif", save_all=True, append_images=pages[1:])
    Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / "single.tif")
    result = scan_dataset(tmp_path)
    names = [f.name for f in result.frames]
    assert names == ["cine.tif#frame_000001", "cine.tif#frame_000002", "cine.tif#frame_000003", "single.tif"]
    for k, frame in enumerate(result.frames[:3]):
        assert frame.error is None and (frame.width, frame.height) == (32, 24)
        assert np.array_equal(decode_image(frame.data, frame.name)[..., 0], np.asarray(pages[k]))
    assert any("3 pages" in i.message for i in result.issues)


def test_a_dicom_cine_in_a_folder_gives_one_frame_per_cine_frame(tmp_path: Path) -> None:
    write_xa_study(tmp_path / "study", 4, seed=1, multiframe=True, size=64)
    result = scan_dataset(tmp_path / "study")
    assert len(result.frames) == 4 and all(f.error is None for f in result.frames)
    assert [f.meta["frame"] for f in result.frames] == [1, 2, 3, 4]
    assert len({f.meta["sop_uid"] for f in result.frames}) == 1


def test_a_split_of_pseudonymised_names_selects_the_same_frames_as_raw_names(tmp_path: Path) -> None:
    from sa2va_queue.core.pseudonyms import Pseudonymizer
    from sa2va_queue.producer.dataset import DatasetScan

    rng = np.random.default_rng(0)
    names = [f"P{p:03d}__1-4_1_ABCD{p:04d}_frame_{i:06d}.png" for p in range(3) for i in range(2)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(tmp_path / name)
    pseudo = Pseudonymizer(b"k" * 32)
    chosen = names[:3]
    (tmp_path / "raw.txt").write_text("\n".join(chosen) + "\n")
    (tmp_path / "shared.txt").write_text("\n".join(pseudo.name(n) for n in chosen) + "\n")
    for listing in ("raw.txt", "shared.txt"):
        scan = DatasetScan(tmp_path, split=tmp_path / listing, pseudonymizer=pseudo)
        assert [f.name for f in scan.frames()] == chosen
        assert not [i for i in scan.issues if i.severity == "error"]
