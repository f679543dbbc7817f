"""Annotation parsers: problems come back as issues naming file and polygon, never as exceptions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sa2va_queue.producer.annotations import (
    ImageAnnotation,
    detect_flavour,
    fit_to_image,
    load_annotations,
    parse_coco,
    parse_labelme,
    parse_training,
)


def _labelme(shapes: list[dict], width: int | None = 800, height: int | None = 800) -> dict:
    doc = {"version": "5.4.1", "shapes": shapes, "imagePath": "frame.jpg", "imageData": None}
    if width is not None:
        doc.update(imageWidth=width, imageHeight=height)
    return doc


def _shape(points: list[list[float]], kind: str = "polygon") -> dict:
    return {"label": "artery", "points": points, "shape_type": kind}


def test_labelme_declared_800_on_512_image_is_scaled_by_064_with_a_warning() -> None:
    ann, issues = parse_labelme(_labelme([_shape([[100, 100], [700, 100], [700, 700]])]), "a/frame.json")
    assert issues == [] and ann.declared_size == (800, 800) and ann.labels == ["artery"]
    polygons, issues = fit_to_image(ann, 512, 512)
    assert np.allclose(polygons[0], [[64, 64], [448, 64], [448, 448]])
    assert [i.severity for i in issues] == ["warning"]
    assert "declared 800x800, image is 512x512" in issues[0].message and "0.64" in issues[0].message
    assert issues[0].file == "a/frame.json"


def test_coordinates_outside_without_declared_size_are_an_error() -> None:
    ann, _ = parse_labelme(_labelme([_shape([[10, 10], [700, 10], [700, 600]])], width=None), "b.json")
    assert ann.declared_size is None
    _, issues = fit_to_image(ann, 512, 512)
    assert [i.severity for i in issues] == ["error"]
    assert "outside the 512x512 image" in issues[0].message and "declares no size" in issues[0].message


def test_declared_size_that_does_not_explain_the_overshoot_is_an_error() -> None:
    ann, _ = parse_labelme(_labelme([_shape([[10, 10], [600, 10], [600, 600]])], 512, 512), "c.json")
    _, issues = fit_to_image(ann, 512, 512)
    assert [i.severity for i in issues] == ["error"] and "does not explain" in issues[0].message


def test_coordinates_within_one_pixel_are_clipped_silently() -> None:
    ann = ImageAnnotation("x.png", [np.array([[-0.8, 0.0], [63.8, 0.0], [63.8, 63.9]])], None, "x.json", ["v"])
    polygons, issues = fit_to_image(ann, 64, 64)
    assert issues == []
    assert polygons[0].min() == 0.0 and polygons[0][:, 0].max() == 63.0


def test_polygon_with_two_points_is_a_warning_naming_it_and_is_dropped() -> None:
    shapes = [_shape([[1, 1], [20, 1], [20, 20]]), _shape([[5, 5], [6, 6]]), _shape([[3, 3]])]
    ann, issues = parse_labelme(_labelme(shapes, 64, 64), "d.json")
    assert len(ann.polygons) == 1 and ann.errors == []
    assert [i.severity for i in issues] == ["warning", "warning"]
    assert "shape 1" in issues[0].message and "2 point(s)" in issues[0].message
    assert "shape 2" in issues[1].message and all(i.file == "d.json" for i in issues)


def test_rectangle_becomes_four_points_and_other_shapes_are_skipped_with_info() -> None:
    shapes = [_shape([[2, 3], [10, 8]], "rectangle"), _shape([[5, 5], [8, 8]], "circle")]
    ann, issues = parse_labelme(_labelme(shapes, 64, 64), "e.json")
    assert np.array_equal(ann.polygons[0], [[2, 3], [10, 3], [10, 8], [2, 8]])
    assert [i.severity for i in issues] == ["info"] and "circle" in issues[0].message


def test_training_format_odd_coordinate_count_is_an_error_for_that_image() -> None:
    doc = [
        {"image": "p/a.jpg", "mask": [[1, 1, 30, 1, 30, 30]], "text": ["blood vessel"]},
        {"image": "p/b.jpg", "mask": [[1, 1, 30, 1, 30]], "text": ["blood vessel"]},
    ]
    anns, issues = parse_training(doc, "annotations.json")
    by_image = {a.image: a for a in anns}
    assert by_image["p/a.jpg"].errors == [] and len(by_image["p/a.jpg"].polygons) == 1
    assert by_image["p/a.jpg"].declared_size is None and by_image["p/a.jpg"].labels == ["blood vessel"]
    assert by_image["p/b.jpg"].errors and "odd number of coordinates (5)" in by_image["p/b.jpg"].errors[0]
    assert [i.severity for i in issues] == ["error"] and "p/b.jpg" in issues[0].message


def test_training_entries_for_one_image_are_merged() -> None:
    doc = [{"image": "a.jpg", "mask": [[0, 0, 9, 0, 9, 9]]}, {"image": "a.jpg", "mask": [[[20, 20, 29, 20, 29, 29]]]}]
    anns, issues = parse_training(doc, "t.json")
    assert issues == [] and len(anns) == 1 and len(anns[0].polygons) == 2


def test_training_polygon_written_as_point_pairs_is_accepted() -> None:
    anns, issues = parse_training([{"image": "a.jpg", "mask": [[[0, 0], [9, 0], [9, 9]]]}], "t.json")
    assert issues == [] and np.array_equal(anns[0].polygons[0], [[0, 0], [9, 0], [9, 9]])


def test_malformed_json_is_an_error_issue_naming_file_and_error(tmp_path: Path) -> None:
    bad = tmp_path / "broken.json"
    bad.write_text('{"shapes": [', encoding="utf-8")
    flavour, anns, issues = load_annotations(bad)
    assert flavour is None and anns == []
    assert [i.severity for i in issues] == ["error"]
    assert issues[0].file == str(bad) and "malformed JSON" in issues[0].message and "line 1" in issues[0].message


def test_load_annotations_detects_flavour_by_content(tmp_path: Path) -> None:
    path = tmp_path / "whatever.json"
    path.write_text(json.dumps([{"image": "a.png", "mask": [[0, 0, 5, 0, 5, 5]], "text": ["v"]}]), encoding="utf-8")
    assert load_annotations(path)[0] == "training"
    assert detect_flavour({"shapes": []}) == "labelme"
    assert detect_flavour({"images": [], "annotations": []}) == "coco"
    assert detect_flavour({"train": ["a.png"]}) is None


def _coco(segmentation: object) -> dict:
    return {
        "images": [{"id": 7, "file_name": "seq/f1.png", "width": 64, "height": 48}],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 3, "segmentation": segmentation, "iscrowd": 0}],
        "categories": [{"id": 3, "name": "vessel"}],
    }


def test_coco_polygon_is_parsed_with_declared_size_and_label() -> None:
    anns, issues = parse_coco(_coco([[1, 1, 20, 1, 20, 10, 1, 10]]), "coco.json")
    assert issues == []
    (ann,) = anns
    assert ann.image == "seq/f1.png" and ann.declared_size == (64, 48) and ann.labels == ["vessel"]
    assert np.array_equal(ann.polygons[0], [[1, 1], [20, 1], [20, 10], [1, 10]])


def test_coco_rle_is_an_error_asking_for_polygons_or_masks() -> None:
    anns, issues = parse_coco(_coco({"size": [48, 64], "counts": "abc"}), "coco.json")
    assert [i.severity for i in issues] == ["error"]
    assert "RLE not supported, give polygons or mask PNGs" in issues[0].message
    assert anns[0].errors and anns[0].polygons == []


def test_coco_annotation_for_unknown_image_is_a_warning() -> None:
    doc = _coco([[1, 1, 20, 1, 20, 10]])
    doc["annotations"][0]["image_id"] = 99
    _, issues = parse_coco(doc, "coco.json")
    assert [i.severity for i in issues] == ["warning"] and "99" in issues[0].message


def test_coordinate_checks_catch_what_json_can_hold() -> None:
    from sa2va_queue.producer.annotations import _finite_numbers, _three_distinct

    assert _finite_numbers([1, 2.5, -3]).tolist() == [1.0, 2.5, -3.0]
    for bad in ([1, True, 2], [1, None], [1, "2"], [1, float("nan")], [float("inf"), 1], [10**400, 1], "12", [[1, 2]]):
        assert _finite_numbers(bad) is None, bad
    pts = lambda *xy: np.array(xy, dtype=np.float64)  # noqa: E731
    assert _three_distinct(pts((0, 0), (1, 0), (0, 1)))
    assert _three_distinct(pts((0, 0), (0, 0), (0, 0), (1, 0), (1, 0), (0, 1)))  # distinct ones come late
    assert not _three_distinct(pts((0, 0), (1, 0), (0, 0), (1, 0)))
    assert not _three_distinct(pts((2, 2), (2, 2), (2, 2)))
    assert not _three_distinct(pts((0, 0), (1, 1)))
