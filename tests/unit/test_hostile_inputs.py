"""Issue 8: each hostile input, as a real file next to good frames, fails alone with a one-line reason.

Before these fixes every case here stopped the whole run (a traceback, exit 1, no job stored).
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from sa2va_queue.core import imaging
from sa2va_queue.core.exceptions import ImageTooLarge
from sa2va_queue.producer.annotations import MAX_JSON_DEPTH, load_annotations
from sa2va_queue.producer.dataset import ScanResult, issues_table, scan_dataset


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height (a decompression bomb: no pixel data)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Two good 32x32 frames with masks: whatever else is added, these must come through intact."""
    root = tmp_path / "data"
    root.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("good_a", "good_b"):
        (root / f"{stem}.png").write_bytes(_png(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
        (root / f"{stem}_mask.png").write_bytes(_png(np.eye(32, dtype=np.uint8) * 255))
    return root


@pytest.fixture
def pixel_limit():
    """Restores the process-wide pixel limit a test changes."""
    before = imaging.max_pixels()
    yield imaging.set_max_pixels
    imaging.set_max_pixels(before)


def _scan(root: Path, **kwargs) -> ScanResult:
    result = scan_dataset(root, **kwargs)
    good = {f.name: f for f in result.frames if f.name.startswith("good_")}
    assert sorted(good) == ["good_a.png", "good_b.png"]
    assert all(f.error is None and f.gt_mask is not None for f in good.values())
    Console(file=io.StringIO(), width=200).print(issues_table(result.issues))  # printing never raises
    return result


def _frame(result: ScanResult, name: str):
    return next(f for f in result.frames if f.name == name)


def _issue_for(result: ScanResult, needle: str) -> str:
    found = [f"{i.severity} {i.file}: {i.message}" for i in result.issues if needle in f"{i.file} {i.message}"]
    assert found, f"no issue mentions {needle!r}: {result.issues}"
    return found[0]


def _one_line(text: str) -> None:
    assert "\n" not in text and "Traceback" not in text


# -- decompression bombs and the pixel limit ----------------------------------------------------------


def test_bomb_png_as_an_image_is_refused_as_too_large(folder):
    (folder / "bomb.png").write_bytes(_png_header_only(40000, 40000))
    result = _scan(folder)
    error = _frame(result, "bomb.png").error
    assert error.startswith("bomb.png: too large: 1600000000 px") and f"limit {imaging.max_pixels()}" in error
    _one_line(error)


def test_bomb_png_as_a_mask_fails_only_its_frame(folder):
    rng = np.random.default_rng(1)
    (folder / "victim.png").write_bytes(_png(rng.integers(0, 255, (32, 32), dtype=np.uint8)))
    (folder / "victim_mask.png").write_bytes(_png_header_only(40000, 40000))
    result = _scan(folder)
    error = _frame(result, "victim.png").error
    assert "victim_mask.png: too large: 1600000000 px" in error
    _one_line(error)


def test_real_8000x8000_frame_is_refused_by_default_without_decoding(folder):
    """It used to be accepted and took 234 s and 4.5 GB in the worker."""
    buf = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buf, format="PNG")  # ~60 kB on disk, 64 MP once decoded
    (folder / "huge.png").write_bytes(buf.getvalue())
    result = _scan(folder)
    assert "too large: 64000000 px (8000x8000), limit 16777216" in _frame(result, "huge.png").error


def test_pixel_limit_is_configurable_and_refuses(folder, pixel_limit):
    (folder / "big.png").write_bytes(_png(np.zeros((200, 300), np.uint8)))
    pixel_limit(200 * 300)
    assert _frame(_scan(folder), "big.png").error is None  # at the limit: accepted
    pixel_limit(200 * 300 - 1)
    error = _frame(scan_dataset(folder), "big.png").error
    assert "too large: 60000 px (300x200), limit 59999" in error
    with pytest.raises(ImageTooLarge, match="too large: 60000 px"):
        imaging.decode_image((folder / "big.png").read_bytes(), "big.png")


# -- JSON depth and size -----------------------------------------------------------------------------


def test_deeply_nested_labelme_file_is_an_error_issue(folder):
    (folder / "deep.png").write_bytes((folder / "good_a.png").read_bytes()[:-1] + b"\x00")  # distinct bytes
    (folder / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    result = _scan(folder)
    assert "nested too deeply" in _issue_for(result, "deep.json")
    assert "deep.json" in (_frame(result, "deep.png").error or "")


def test_deeply_nested_points_are_an_error_issue(tmp_path):
    deep = "[" * 5000 + "1" + "]" * 5000
    path = tmp_path / "frame.json"
    path.write_text('{"shapes": [{"shape_type": "polygon", "points": %s}], "imageWidth": 8, "imageHeight": 8}' % deep)
    flavour, anns, issues = load_annotations(path)
    assert flavour is None and anns == [] and issues[0].severity == "error"
    assert "nested" in issues[0].message


def test_moderately_nested_json_is_refused_by_the_depth_limit(tmp_path):
    depth = MAX_JSON_DEPTH + 5  # parses fine, but no annotation format nests like this
    path = tmp_path / "annotations.json"
    path.write_text('[{"image": "a.png", "mask": ' + "[" * depth + "]" * depth + "}]")
    flavour, _anns, issues = load_annotations(path)
    assert flavour is None and f"deeper than {MAX_JSON_DEPTH}" in issues[0].message


def test_deeply_nested_root_annotations_json_leaves_the_frames_alone(folder):
    (folder / "annotations.json").write_text("{\"a\":" * 50_000 + "1" + "}" * 50_000)
    result = _scan(folder)
    assert "nested too deeply" in _issue_for(result, "annotations.json")


def test_oversized_annotation_file_is_refused(tmp_path, monkeypatch):
    from sa2va_queue.producer import annotations

    monkeypatch.setattr(annotations, "MAX_JSON_BYTES", 1000)
    path = tmp_path / "coco.json"
    path.write_text(json.dumps({"images": [], "annotations": [], "pad": "x" * 2000}))
    _flavour, _anns, issues = load_annotations(path)
    assert "over the 1000-byte limit" in issues[0].message


# -- LabelMe sizes and COCO ids ----------------------------------------------------------------------


@pytest.mark.parametrize("width", [0.5, 1e-300])
def test_labelme_fractional_image_width_is_a_warning_not_a_crash(folder, width):
    square = [[4, 4], [20, 4], [20, 20], [4, 20]]
    (folder / "lm.png").write_bytes(_png(np.full((32, 32), 7, np.uint8)))
    (folder / "lm.json").write_text(json.dumps({"shapes": [{"shape_type": "polygon", "points": square, "label": "v"}],
                                                "imagePath": "lm.png", "imageWidth": width, "imageHeight": 32}))
    result = _scan(folder)
    assert "not a size in pixels" in _issue_for(result, "lm.json")
    frame = _frame(result, "lm.png")
    assert frame.error is None and frame.gt_mask.sum() == 17 * 17  # the polygon, in the image's own frame


def test_labelme_image_path_never_reaches_issues_or_failure_reasons(folder):
    """imagePath often holds a patient's folder; only the file's own stem (and the suffix) is shown."""
    (folder / "seq1.png").write_bytes(_png(np.full((32, 32), 11, np.uint8)))
    (folder / "seq1.json").write_text(json.dumps({
        "shapes": [{"shape_type": "polygon", "points": [[1, 1], [90, 1], [90, 90]], "label": "v"}],
        "imagePath": "C:\\Patients\\Doe Jane 1961\\seq1.png", "imageWidth": 100, "imageHeight": 100}))
    result = _scan(folder)
    shown = " ".join(f"{i.file} {i.message}" for i in result.issues) + str(_frame(result, "seq1.png").error)
    assert "declared 100x100" in shown and "seq1.png" in shown and "Doe" not in shown


def test_coco_list_as_id_is_an_error_issue(folder):
    coco = {"images": [{"id": [1], "file_name": "good_a.png", "width": 32, "height": 32},
                       {"id": 2, "file_name": "good_b.png", "width": 32, "height": 32}],
            "annotations": [{"image_id": [1], "segmentation": [[1, 1, 9, 1, 9, 9]]},
                            {"image_id": {"x": 1}, "category_id": [3], "segmentation": [[1, 1, 9, 1, 9, 9]]}],
            "categories": [{"id": [3], "name": "vessel"}]}
    (folder / "coco.json").write_text(json.dumps(coco))
    flavour, anns, issues = load_annotations(folder / "coco.json")
    assert flavour == "coco" and [a.image for a in anns] == ["good_b.png"]
    assert any("lacks an id" in i.message for i in issues)
    result = scan_dataset(folder, gt=folder / "coco.json")
    assert "lacks an id" in _issue_for(result, "coco.json")


# -- file names --------------------------------------------------------------------------------------


def test_non_utf8_file_name_is_refused_and_storable(folder):
    raw = os.path.join(os.fsencode(folder), b"frame_\xff\xfe.png")
    with open(raw, "wb") as fh:
        fh.write(_png(np.full((32, 32), 9, np.uint8)))
    result = _scan(folder)
    bad = [f for f in result.frames if f.name.startswith("frame_")]
    assert len(bad) == 1 and bad[0].name == "frame_\\udcff\\udcfe.png"
    assert "not valid UTF-8" in bad[0].error
    _one_line(bad[0].error)
    # what reaches SQL can be stored: SQLite (like PostgreSQL) refuses lone surrogates
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE jobs (name TEXT, error TEXT)")
        db.execute("INSERT INTO jobs VALUES (?, ?)", (bad[0].name, bad[0].error))
        with pytest.raises(UnicodeEncodeError):
            db.execute("INSERT INTO jobs VALUES (?, ?)", (os.fsdecode(b"frame_\xff.png"), ""))


def test_254_character_file_name_is_refused_with_a_reason(folder):
    name = "a" * 250 + ".png"
    (folder / name).write_bytes(_png(np.full((32, 32), 3, np.uint8)))
    result = _scan(folder)
    error = _frame(result, name).error
    assert "file name too long" in error and "over the file system's limit of 255" in error


def test_markup_in_a_path_prints_verbatim(folder):
    odd = folder / "[red]x[" / "[bold]"
    odd.mkdir(parents=True)
    (odd / "[b]frame[x].png").write_bytes(b"not an image")
    result = scan_dataset(folder)
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(issues_table(result.issues))
    assert "[red]x[/[bold]/[b]frame[x].png" in out.getvalue()


def test_control_characters_in_names_never_reach_the_terminal(folder):
    (folder / "esc\x1b[31m.png").write_bytes(_png(np.full((32, 32), 5, np.uint8)))
    result = _scan(folder)
    out = io.StringIO()
    Console(file=out, width=300, color_system=None).print(issues_table(result.issues))
    assert "\x1b" not in out.getvalue() and "esc\\x1b[31m.png" in out.getvalue()


# -- links and special files -------------------------------------------------------------------------


def test_symlink_loop_is_an_issue_line(folder):
    os.symlink("loop.png", folder / "loop.png")
    assert "symlink loop" in (_frame(_scan(folder), "loop.png").error or "")


def test_dangling_symlink_is_an_issue_line(folder):
    os.symlink(folder / "gone.png", folder / "dangling.png")
    assert "dangling symlink" in (_frame(_scan(folder), "dangling.png").error or "")


@pytest.mark.timeout(30)
def test_fifo_is_an_issue_line_and_never_read(folder):
    os.mkfifo(folder / "pipe.png")  # reading it would block the scan forever
    os.mkfifo(folder / "notes.json")  # as would a stray JSON
    result = _scan(folder)
    assert "not a regular file (a FIFO)" in _frame(result, "pipe.png").error
    assert "not a regular file" in _issue_for(result, "notes.json")


def test_binary_split_file_is_one_input_error(folder):
    from sa2va_queue.core.exceptions import InputError

    split = folder.parent / "test.txt"
    split.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="cannot read the split file"):
        scan_dataset(folder, split=split)


def test_symlink_loop_beside_a_gt_folder_inside_the_dataset(folder):
    """With --gt inside the dataset, every path is resolved to keep masks out of the frames; a loop
    raised RuntimeError from Path.resolve there."""
    (folder / "gt").mkdir()
    os.symlink("loop.png", folder / "loop.png")
    os.symlink("notes.json", folder / "notes.json")
    result = scan_dataset(folder, gt=folder / "gt")
    assert "symlink loop" in _frame(result, "loop.png").error
    assert "Too many levels of symbolic links" in _issue_for(result, "notes.json")
