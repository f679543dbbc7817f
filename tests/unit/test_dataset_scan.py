"""scan_dataset on small real folders: frames, ground truth, failed frames and issues."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from sa2va_queue.producer.dataset import Frame, ScanResult, issues_table, list_images, scan_dataset
from sa2va_queue.core.exceptions import InputError
from sa2va_queue.core.imaging import encode_mask


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _grey(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w), dtype=np.uint8)


def _by_name(result: ScanResult) -> dict[str, Frame]:
    return {f.name: f for f in result.frames}


def _issues(result: ScanResult, severity: str) -> list[str]:
    return [f"{i.file}: {i.message}" for i in result.issues if i.severity == severity]


@pytest.fixture()
def messy(tmp_path: Path) -> Path:
    """PNG + JPEG + 16-bit PNG, an empty file, a truncated JPEG, a duplicate and a wrong-size mask."""
    root = tmp_path / "data"
    (root / "seq").mkdir(parents=True)
    a = _png(np.stack([_grey(24, 32, 1)] * 3, axis=2))
    (root / "a.png").write_bytes(a)
    (root / "z_copy_of_a.png").write_bytes(a)
    mask = np.zeros((24, 32), dtype=bool)
    mask[5:10, 4:20] = True
    (root / "a_mask.png").write_bytes(encode_mask(mask))
    (root / "b.jpg").write_bytes(_jpeg(_grey(24, 32, 2)))
    (root / "b_mask.png").write_bytes(encode_mask(np.ones((30, 30), dtype=bool)))
    (root / "seq" / "c16.png").write_bytes(_png((np.arange(24 * 32, dtype=np.uint16) * 50).reshape(24, 32)))
    (root / "empty.png").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(_jpeg(_grey(64, 64, 3))[:300])
    return root


def test_messy_folder_frames_errors_and_issues(messy: Path) -> None:
    result = scan_dataset(messy)
    frames = _by_name(result)
    assert [f.name for f in result.frames] == ["a.png", "b.jpg", "empty.png", "seq/c16.png", "trunc.jpg"]
    assert list_images(messy) == ["a.png", "b.jpg", "empty.png", "seq/c16.png", "trunc.jpg", "z_copy_of_a.png"]

    a = frames["a.png"]
    assert (a.width, a.height, a.media_type, a.error) == (32, 24, "image/png", None)
    assert a.gt_source == "a_mask.png" and a.gt_mask is not None and a.gt_mask.sum() == 5 * 16
    assert a.data == (messy / "a.png").read_bytes()

    c16 = frames["seq/c16.png"]
    assert c16.error is None and c16.mode.startswith("I") and c16.gt_mask is None and c16.gt_source is None

    b = frames["b.jpg"]  # wrong-size mask: kept, recorded as failed with the reason
    assert b.gt_mask is None and b.data
    assert "b_mask.png" in b.error and "30x30" in b.error and "32x24" in b.error
    assert "give a mask of the image's size" in b.error

    assert "empty" in frames["empty.png"].error and frames["empty.png"].width is None
    assert "trunc.jpg" in frames["trunc.jpg"].error and "cannot decode" in frames["trunc.jpg"].error

    errors = _issues(result, "error")
    assert any(e.startswith("b_mask.png:") for e in errors)
    assert any(e.startswith("empty.png:") for e in errors) and any(e.startswith("trunc.jpg:") for e in errors)
    assert _issues(result, "warning") == ["z_copy_of_a.png: duplicate of a.png; not enqueued twice"]


def test_labelme_beside_image_is_scaled_and_rasterised(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(_png(_grey(40, 40, 4)))
    square = [[25, 25], [75, 25], [75, 50], [25, 50]]
    doc = {"shapes": [{"label": "artery", "points": square, "shape_type": "polygon"},
                      {"label": "artery", "points": [[1, 1], [2, 2]], "shape_type": "polygon"}],
           "imagePath": "f.png", "imageWidth": 100, "imageHeight": 100}
    (tmp_path / "f.json").write_text(json.dumps(doc), encoding="utf-8")
    result = scan_dataset(tmp_path)
    (frame,) = result.frames
    assert frame.error is None and frame.gt_source == "f.json"
    assert frame.gt_mask.sum() == 21 * 11  # x 10..30, y 10..20 after scaling by 0.4, edges included
    warnings = _issues(result, "warning")
    assert any("declared 100x100, image is 40x40: coordinates scaled by 0.4" in w for w in warnings)
    assert any("shape 1" in w and "dropped" in w for w in warnings)


def test_first_source_wins_and_the_others_are_reported(tmp_path: Path) -> None:
    (tmp_path / "f.png").write_bytes(_png(_grey(16, 16, 5)))
    (tmp_path / "f_mask.png").write_bytes(encode_mask(np.eye(16, dtype=bool)))
    (tmp_path / "f.json").write_text(json.dumps({"shapes": [], "imagePath": "f.png"}), encoding="utf-8")
    result = scan_dataset(tmp_path)
    assert result.frames[0].gt_source == "f_mask.png" and result.frames[0].gt_mask.sum() == 16
    assert _issues(result, "info") == ["f.json: also found f.json, used f_mask.png"]


def test_root_annotations_are_read_after_the_frames_that_have_their_own_masks(tmp_path: Path) -> None:
    """Every frame has a mask: the root annotations.json (seconds to parse when large) is read only
    after the last frame, and still named in the "also found" note; a frame without a mask uses it."""
    from sa2va_queue.producer.dataset import DatasetScan

    for name in ("a", "b"):
        (tmp_path / f"{name}.png").write_bytes(_png(_grey(16, 16, ord(name))))
        (tmp_path / f"{name}_mask.png").write_bytes(encode_mask(np.eye(16, dtype=bool)))
    training = [{"image": f"{n}.png", "mask": [[1, 1, 10, 1, 10, 10]], "text": ["blood vessel"]} for n in "abc"]
    (tmp_path / "annotations.json").write_text(json.dumps(training), encoding="utf-8")
    scan = DatasetScan(tmp_path)
    frames = scan.frames(finish=False)  # as `run` reads them: the end-of-scan notes after the last send
    assert [next(frames).gt_source, next(frames).gt_source] == ["a_mask.png", "b_mask.png"]
    assert list(frames) == []
    assert scan._scan._root_list is None  # not parsed while frames with masks stream
    assert scan.issues == []
    scan.finish()
    assert [f"{i.file}: {i.message}" for i in scan.issues if i.severity != "error"] == [
        "annotations.json: also found annotations.json, used a_mask.png (and the same for 1 more frame(s))",
        "annotations.json: annotation for c.png, but no such image in the dataset; ignored"]

    (tmp_path / "c.png").write_bytes(_png(_grey(16, 16, 3)))  # no mask: the root file's polygon is used
    found = _by_name(scan_dataset(tmp_path))
    assert found["c.png"].gt_source == "annotations.json" and found["c.png"].gt_mask.sum() > 0
    assert found["a.png"].gt_source == "a_mask.png"


def test_broken_annotations_do_not_stop_the_scan(tmp_path: Path) -> None:
    for name in ("g.png", "h.png", "k.png"):
        (tmp_path / name).write_bytes(_png(_grey(20, 20, len(name) + ord(name[0]))))
    (tmp_path / "g.json").write_text('{"shapes": [{"points": ', encoding="utf-8")
    training = [{"image": "h.png", "mask": [[1, 1, 15, 1, 15, 15, 1]], "text": ["blood vessel"]},
                {"image": "k.png", "mask": [[1, 1, 40, 1, 40, 15]], "text": ["blood vessel"]},
                {"image": "missing.png", "mask": [[1, 1, 5, 1, 5, 5]], "text": ["blood vessel"]}]
    (tmp_path / "annotations.json").write_text(json.dumps(training), encoding="utf-8")
    result = scan_dataset(tmp_path)
    frames = _by_name(result)
    assert "g.json" in frames["g.png"].error and "malformed JSON" in frames["g.png"].error
    assert "odd number of coordinates" in frames["h.png"].error
    assert "outside the 20x20 image" in frames["k.png"].error
    errors = _issues(result, "error")
    assert any(e.startswith("g.json: malformed JSON") for e in errors)
    assert any("missing.png" in w and "no such image" in w for w in _issues(result, "warning"))


def test_gt_folder_and_coco_file(tmp_path: Path) -> None:
    root, masks = tmp_path / "img", tmp_path / "gt"
    root.mkdir()
    masks.mkdir()
    (root / "m.png").write_bytes(_png(_grey(10, 12, 6)))
    (root / "n.png").write_bytes(_png(_grey(10, 12, 7)))
    (masks / "m.png").write_bytes(encode_mask(np.ones((10, 12), dtype=bool)))
    result = scan_dataset(root, gt=masks)
    frames = _by_name(result)
    assert frames["m.png"].gt_mask.all() and frames["m.png"].gt_source == str(masks / "m.png")
    assert frames["n.png"].gt_mask is None

    coco = {"images": [{"id": 1, "file_name": "n.png", "width": 12, "height": 10}],
            "annotations": [{"image_id": 1, "segmentation": [[0.5, 0.5, 5.5, 0.5, 5.5, 3.5, 0.5, 3.5]]}]}
    (tmp_path / "coco.json").write_text(json.dumps(coco), encoding="utf-8")
    frames = _by_name(scan_dataset(root, gt=tmp_path / "coco.json"))
    assert frames["n.png"].gt_mask.sum() == 5 * 3 and frames["m.png"].gt_mask is None


def test_gt_folder_inside_the_dataset_holds_masks_not_frames(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    (tmp_path / "m.png").write_bytes(_png(_grey(10, 12, 6)))
    (tmp_path / "masks" / "m.png").write_bytes(encode_mask(np.ones((10, 12), dtype=bool)))
    result = scan_dataset(tmp_path, gt=tmp_path / "masks")
    assert [f.name for f in result.frames] == ["m.png"] and result.frames[0].gt_source == "masks/m.png"
    assert [f.name for f in scan_dataset(tmp_path, gt=tmp_path).frames] == ["m.png", "masks/m.png"]


def test_split_keeps_listed_frames_and_reports_missing(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"f{i}.png").write_bytes(_png(_grey(8, 8, 10 + i)))
    split = tmp_path / "test.txt"
    split.write_text("f2.png\nf0.png\ngone.png\n", encoding="utf-8")
    result = scan_dataset(tmp_path, split=split)
    assert [f.name for f in result.frames] == ["f0.png", "f2.png"]
    assert any(e.startswith("gone.png:") and "not found" in e for e in _issues(result, "error"))


def test_single_file_root_and_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "one.jpg").write_bytes(_jpeg(_grey(16, 16, 8)))
    result = scan_dataset(tmp_path / "one.jpg")
    assert [f.name for f in result.frames] == ["one.jpg"] and result.frames[0].media_type == "image/jpeg"
    with pytest.raises(InputError, match="does not exist"):
        scan_dataset(tmp_path / "nope")


def test_issues_table_lists_errors_first(messy: Path) -> None:
    result = scan_dataset(messy)
    table = issues_table(result.issues)
    assert [c.header for c in table.columns] == ["severity", "file", "problem", "what to do"]
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert text.index("error") < text.index("warning")
    assert "duplicate of a.png" in text
