"""Ground-truth polygons from LabelMe, the training `annotations.json` and COCO files.

Each parser returns the polygons per image plus a list of `Issue`s; none raises for bad user data,
so one broken file never stops a scan of a thousand good ones. Problems are never silent:

* a polygon with fewer than 3 points is dropped with a warning naming the file and polygon index
  (the data this is for had a polygon with a single point);
* an odd coordinate count, a non-numeric coordinate or COCO RLE is an error for that image: its
  ground truth is then unusable (the message goes into `ImageAnnotation.errors`);
* malformed JSON is an error issue naming the file and the JSON error; so is a file over
  `MAX_JSON_BYTES`, one nested deeper than `MAX_JSON_DEPTH` (LabelMe and COCO nest 4-5 levels; a
  deeply nested file raised RecursionError), and anything else a parser trips over (a safety net:
  `load_annotations` never raises for a file's content);
* text from the file (image paths, labels) reaches issues and stored errors with control characters
  and lone surrogates escaped, so it can be printed and stored in SQL.

`fit_to_image` then checks the polygons against the real image: a declared size that differs is
scaled away with a warning (600 files of that data declared 800x800 for 512x512 images).
"""

from __future__ import annotations

import json
import math
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import numpy as np

from sa2va_queue.core.names import escape_unprintable

Severity = Literal["error", "warning", "info"]
Flavour = Literal["labelme", "training", "coco"]

# A coordinate may sit this far outside the image (polygon drawn along the border) and is clipped.
EDGE_TOLERANCE_PX = 1.0
# A COCO file of a large dataset runs to a few hundred MB; Python needs ~10x that in memory.
MAX_JSON_BYTES = 256 * 1024 * 1024
MAX_JSON_DEPTH = 64
# A declared image size beyond this is not an image size (imageWidth 1e300, 2**63).
MAX_DECLARED_SIDE = 1_000_000


@dataclass
class Issue:
    severity: Severity
    file: str
    message: str
    action: str

    def __post_init__(self) -> None:  # file names and JSON strings may hold control characters
        self.file = escape_unprintable(str(self.file))
        self.message = escape_unprintable(str(self.message))
        self.action = escape_unprintable(str(self.action))


@dataclass
class ImageAnnotation:
    image: str  # image path as the annotation names it (POSIX)
    polygons: list[np.ndarray]  # each (N, 2) float64 of (x, y), N >= 3
    declared_size: tuple[int, int] | None  # (width, height) when the file declares one
    source: str  # the annotation file
    labels: list[str]
    errors: list[str] = field(default_factory=list)  # set: this image's ground truth is unusable


def read_json(path: Path) -> tuple[Any | None, list[Issue]]:
    """The parsed JSON, or None and an error issue naming the file and what is wrong with it."""
    def error(message: str, action: str = "fix or re-export the annotation file") -> tuple[None, list[Issue]]:
        return None, [Issue("error", str(path), message, action)]

    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block the scan forever
            return error("not a regular file (a FIFO, socket or device); not read", "replace it with the JSON file")
        if info.st_size > MAX_JSON_BYTES:
            return error(f"annotation file is {info.st_size} bytes, over the {MAX_JSON_BYTES}-byte limit",
                         "split it (e.g. one LabelMe file per image, or one COCO file per sequence)")
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return error(f"cannot read annotation file ({exc})", "check the file exists, is readable and is UTF-8 JSON")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return error(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    except RecursionError:
        return error(f"JSON nested too deeply to parse (annotation files nest at most {MAX_JSON_DEPTH} levels)")
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        return error(f"unreadable JSON value ({exc})")
    if _nested_deeper_than(obj, MAX_JSON_DEPTH):
        return error(f"JSON nested deeper than {MAX_JSON_DEPTH} levels; annotation files nest 4-5 levels")
    return obj, []


def _nested_deeper_than(obj: Any, limit: int) -> bool:
    """Whether lists/objects nest more than `limit` levels (iterative: no recursion to exhaust).
    A list's element types are gathered in C (`map(type, ...)`), so a polygon's thousands of
    numbers cost no Python step each: 10 M coordinates take 0.3 s instead of 3.5."""
    stack = [(obj, 1)] if isinstance(obj, (list, dict)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        if _CONTAINERS.isdisjoint(map(type, children)):
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (list, dict)))
    return False


_CONTAINERS = frozenset({list, dict})  # what json.loads builds for arrays and objects


def detect_flavour(obj: Any) -> Flavour | None:
    """Which annotation format a parsed JSON document is, judged by its content."""
    if isinstance(obj, dict) and isinstance(obj.get("shapes"), list):
        return "labelme"
    if isinstance(obj, dict) and isinstance(obj.get("images"), list) and "annotations" in obj:
        return "coco"
    if isinstance(obj, list) and obj and all(isinstance(e, dict) and "image" in e for e in obj):
        return "training"
    return None


def load_annotations(path: Path) -> tuple[Flavour | None, list[ImageAnnotation], list[Issue]]:
    """Read any supported annotation file; the flavour is detected from its content."""
    obj, issues = read_json(path)
    if obj is None:
        return None, [], issues
    try:
        return _parse(obj, str(path))
    except Exception as exc:  # noqa: BLE001 -- a safety net: one odd file must never stop a scan
        return None, [], [Issue("error", str(path), f"cannot interpret the annotation file ({type(exc).__name__}: "
                                f"{' '.join(str(exc).split())[:160]})", "fix or re-export the annotation file")]


def _parse(obj: Any, path: str) -> tuple[Flavour | None, list[ImageAnnotation], list[Issue]]:
    flavour = detect_flavour(obj)
    if flavour == "labelme":
        ann, more = parse_labelme(obj, str(path))
        return flavour, [ann], more
    if flavour == "training":
        anns, more = parse_training(obj, str(path))
        return flavour, anns, more
    if flavour == "coco":
        anns, more = parse_coco(obj, str(path))
        return flavour, anns, more
    return None, [], [Issue("info", str(path), "JSON file is not LabelMe, COCO or training-format "
                            "annotations; ignored", "nothing, unless it was meant as ground truth")]


def parse_labelme(obj: dict, file: str) -> tuple[ImageAnnotation, list[Issue]]:
    """One LabelMe document: polygon and rectangle shapes; other shape types are skipped (info)."""
    issues: list[Issue] = []
    # The image is named after this file (a LabelMe file annotates the image of its stem); imagePath
    # lends only its suffix: its folders are often a patient's (`C:\\Patients\\<name>\\...`) and would
    # reach issue rows and stored failure reasons.
    image_path = obj.get("imagePath")
    suffix = PurePosixPath(image_path.replace("\\", "/")).suffix if isinstance(image_path, str) else ""
    image = _text(PurePosixPath(file).stem + (suffix if len(suffix) <= 8 else ""))
    declared = _declared_size(obj.get("imageWidth"), obj.get("imageHeight"), file, issues)
    ann = ImageAnnotation(image=image, polygons=[], declared_size=declared, source=file, labels=[])
    for index, shape in enumerate(obj["shapes"]):
        where = f"shape {index}"
        if not isinstance(shape, dict):
            _error(ann, issues, file, f"{where} is not an object", "re-export the file from LabelMe")
            continue
        kind = shape.get("shape_type") or "polygon"
        points = _points_from_pairs(shape.get("points"))
        if points is None:
            _error(ann, issues, file, f"{where}: points are not a list of [x, y] number pairs",
                   "fix the points of that shape in LabelMe")
            continue
        if kind == "rectangle" and len(points) == 2:
            (x0, y0), (x1, y1) = points
            points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)
        elif kind != "polygon":
            issues.append(Issue("info", file, f"{where} is a '{kind}', not a polygon; ignored",
                                "draw vessels as polygons if this shape was meant as vessel"))
            continue
        _add_polygon(ann, issues, points, where, _text(shape.get("label", "")))
    return ann, issues


def parse_training(obj: list, file: str) -> tuple[list[ImageAnnotation], list[Issue]]:
    """The training list `[{"image", "mask": [[x1, y1, ...], ...], "text": [...]}]`; no sizes declared.

    Entries for the same image are merged (union). A `mask` item may be one flat polygon or a list of
    flat polygons (one object drawn in several parts).
    """
    issues: list[Issue] = []
    by_image: dict[str, ImageAnnotation] = {}
    for index, entry in enumerate(obj):
        raw_image = entry.get("image", "")
        image = _text(raw_image).replace("\\", "/") if isinstance(raw_image, str) else ""
        if not image:
            issues.append(Issue("error", file, f"entry {index} has no image path",
                                "give each entry an \"image\" relative to the dataset root"))
            continue
        ann = by_image.setdefault(image, ImageAnnotation(image, [], None, file, []))
        masks, texts = entry.get("mask"), entry.get("text") or []
        texts = [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else []
        if not isinstance(masks, list):
            _error(ann, issues, file, f"entry {index} ({image}): \"mask\" is not a list of polygons",
                   "write \"mask\" as [[x1, y1, x2, y2, ...], ...]")
            continue
        for obj_index, item in enumerate(masks):
            label = _text(texts[obj_index]) if obj_index < len(texts) else ""
            if isinstance(item, list) and item and all(_is_pair(p) for p in item):
                item = [v for pair in item for v in pair]  # [[x, y], ...] written instead of flat
            parts = item if isinstance(item, list) and item and all(isinstance(p, list) for p in item) else [item]
            for part_index, flat in enumerate(parts):
                where = f"entry {index} ({image}) polygon {obj_index}"
                if len(parts) > 1:
                    where += f" part {part_index}"
                points = _points_from_flat(ann, issues, file, flat, where)
                if points is not None:
                    _add_polygon(ann, issues, points, where, label)
    return list(by_image.values()), issues


def parse_coco(obj: dict, file: str) -> tuple[list[ImageAnnotation], list[Issue]]:
    """COCO instances: polygon segmentations; RLE makes that image's ground truth an error."""
    issues: list[Issue] = []
    categories = {c["id"]: _text(c.get("name", "")) for c in _list(obj.get("categories"))
                  if isinstance(c, dict) and _is_id(c.get("id"))}
    by_id: dict[int | str, ImageAnnotation] = {}
    for img in obj["images"]:
        if not (isinstance(img, dict) and _is_id(img.get("id")) and isinstance(img.get("file_name"), str)
                and img["file_name"]):
            issues.append(Issue("error", file, f"image record {img!r:.80} lacks an id (a number or string) or a "
                                "file_name", "give every COCO image an id and a file_name"))
            continue
        by_id[img["id"]] = ImageAnnotation(_text(img["file_name"]).replace("\\", "/"), [],
                                           _declared_size(img.get("width"), img.get("height"), file, issues), file, [])
    for index, record in enumerate(_list(obj.get("annotations"))):
        key = record.get("image_id") if isinstance(record, dict) else None
        ann = by_id.get(key) if _is_id(key) else None
        if ann is None:
            issues.append(Issue("warning", file, f"annotation {index} refers to image_id "
                                f"{key!r:.40} "
                                "which is not in \"images\"; ignored", "fix the image_id or add the image"))
            continue
        where = f"annotation {index} ({ann.image})"
        seg = record.get("segmentation")
        if isinstance(seg, dict):
            _error(ann, issues, file, f"{where}: RLE not supported, give polygons or mask PNGs",
                   "export polygon segmentations, or give <stem>_mask.png files instead")
            continue
        if not isinstance(seg, list):
            _error(ann, issues, file, f"{where}: no polygon segmentation", "give polygon lists")
            continue
        category = record.get("category_id")
        label = categories.get(category, "") if _is_id(category) else ""
        for part, flat in enumerate(seg):
            points = _points_from_flat(ann, issues, file, flat, f"{where} polygon {part}")
            if points is not None:
                _add_polygon(ann, issues, points, f"{where} polygon {part}", label)
    return list(by_id.values()), issues


def fit_to_image(ann: ImageAnnotation, width: int, height: int) -> tuple[list[np.ndarray], list[Issue]]:
    """The polygons in the pixel frame of the real `width` x `height` image.

    A declared size that differs is scaled away (warning). Then a coordinate more than 1 px outside
    the image is an error (the frame's ground truth is unusable); within 1 px it is clipped.
    """
    issues: list[Issue] = []
    polygons = [np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in ann.polygons]
    declared = ann.declared_size
    if declared is not None and declared != (width, height):
        sx, sy = width / declared[0], height / declared[1]
        factor = f"{sx:.4g}" if math.isclose(sx, sy) else f"{sx:.4g} in x and {sy:.4g} in y"
        issues.append(Issue("warning", ann.source, f"{ann.image}: declared {declared[0]}x{declared[1]}, "
                            f"image is {width}x{height}: coordinates scaled by {factor}",
                            "check the overlay; fix imageWidth/imageHeight in the file to silence this"))
        polygons = [p * np.array([sx, sy]) for p in polygons]
    worst = max((_overshoot(p, width, height) for p in polygons), default=0.0)
    if worst > EDGE_TOLERANCE_PX:
        why = "the file declares no size" if declared is None else "the declared size does not explain it"
        issues.append(Issue("error", ann.source, f"{ann.image}: coordinates outside the {width}x{height} "
                            f"image (by up to {worst:.1f} px) and {why}",
                            "fix the annotation (wrong image, or coordinates in another scale)"))
    hi = np.array([width - 1, height - 1], dtype=np.float64)
    return [np.clip(p, 0.0, hi) for p in polygons], issues


def _overshoot(points: np.ndarray, width: int, height: int) -> float:
    """How far (px) the polygon reaches beyond the pixel-centre range [0, W-1] x [0, H-1]."""
    below = -points.min(axis=0)
    above = points.max(axis=0) - np.array([width - 1, height - 1])
    return float(max(below.max(), above.max(), 0.0))


def _declared_size(width: Any, height: Any, file: str, issues: list[Issue]) -> tuple[int, int] | None:
    """(width, height) when both are whole-pixel sizes; a declared size that is not one is a warning
    and is ignored (imageWidth 0.5 or 1e-300 divided by zero when scaling)."""
    if width is None and height is None:
        return None
    if all(_is_number(v) and 1 <= v <= MAX_DECLARED_SIDE for v in (width, height)):
        return int(width), int(height)
    issues.append(Issue("warning", file, f"declared image size {width!r:.30} x {height!r:.30} is not a size in "
                        f"pixels (1 to {MAX_DECLARED_SIDE}); ignored",
                        "fix imageWidth/imageHeight (or width/height) in the file"))
    return None


def _is_id(value: Any) -> bool:
    """A COCO id: a number or a string (a list or object as id cannot key anything)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    return escape_unprintable(value if isinstance(value, str) else str(value))


def _points_from_pairs(points: Any) -> np.ndarray | None:
    if not isinstance(points, list):
        return None
    if not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(_is_number(v) for v in p) for p in points):
        return None
    return np.array(points, dtype=np.float64).reshape(-1, 2)


def _points_from_flat(ann: ImageAnnotation, issues: list[Issue], file: str, flat: Any,
                      where: str) -> np.ndarray | None:
    points = _finite_numbers(flat)
    if points is None:
        _error(ann, issues, file, f"{where}: not a flat list of numbers [x1, y1, x2, y2, ...]",
               "fix that polygon")
        return None
    if len(points) % 2:
        _error(ann, issues, file, f"{where}: odd number of coordinates ({len(points)}); x/y pairs are "
               "broken", "fix that polygon: it must list x1, y1, x2, y2, ...")
        return None
    return points.reshape(-1, 2)


def _finite_numbers(values: Any) -> np.ndarray | None:
    """float64 array of a list of JSON numbers (not bools, all finite), else None. Checked a list at a
    time in C: a dataset's polygons hold millions of coordinates (10 M: 0.5 s instead of 9)."""
    if not isinstance(values, list) or not _NUMBERS.issuperset(map(type, values)):
        return None
    try:
        arr = np.array(values, dtype=np.float64)
    except (OverflowError, ValueError):  # an integer beyond float range
        return None
    return arr if np.isfinite(arr).all() else None


_NUMBERS = frozenset({int, float})  # json.loads gives exactly these (bool is its own type)


def _add_polygon(ann: ImageAnnotation, issues: list[Issue], points: np.ndarray, where: str, label: str) -> None:
    if not _three_distinct(points):
        issues.append(Issue("warning", ann.source, f"{ann.image}: {where} has {len(points)} point(s), "
                            "fewer than 3 distinct; dropped from the mask",
                            "redraw it as a polygon, or delete it if it was a stray click"))
        return
    ann.polygons.append(points)
    ann.labels.append(label)


def _three_distinct(points: np.ndarray) -> bool:
    """Whether (N, 2) points hold at least 3 distinct ones: two vector passes instead of a sort of
    rows (np.unique(axis=0) took 0.15 ms a polygon, 10 s for a 70,000-polygon file)."""
    if len(points) < 3:
        return False
    a, b, c = points[:3].tolist()  # the usual polygon: its first three points already differ
    if a != b and c != a and c != b:
        return True
    off_first = (points != points[0]).any(axis=1)
    if not off_first.any():
        return False
    second = points[np.argmax(off_first)]
    return bool((off_first & (points != second).any(axis=1)).any())


def _error(ann: ImageAnnotation, issues: list[Issue], file: str, message: str, action: str) -> None:
    ann.errors.append(message)
    issues.append(Issue("error", file, message, action))


def _is_pair(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
