"""Property test: the producer's readers on random and mutated files never raise anything but the
project's InputError family (image codecs), and the annotation loaders and the dataset scan never
raise at all: every problem is an issue row or a failed frame.

Bounded for CI: a fixed number of examples per property and no per-example deadline; with CI=true
the examples are derandomised (the same on every run), locally they vary from run to run.
SA2VA_FUZZ_SCALE=20 multiplies the example counts for a longer hunt.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from rich.console import Console

from sa2va_queue.core import imaging
from sa2va_queue.core.exceptions import InputError
from sa2va_queue.producer.annotations import load_annotations
from sa2va_queue.producer.dataset import issues_table, scan_dataset
from sa2va_queue.producer.rasterize import rasterize_polygons

CI = os.environ.get("CI") == "true"
SCALE = int(os.environ.get("SA2VA_FUZZ_SCALE", "1"))


def _bounded(examples: int):
    return settings(max_examples=examples * SCALE, deadline=None, derandomize=CI, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    seeds = []
    for fmt, arr, kwargs in (("PNG", grey, {}), ("JPEG", grey, {"quality": 80}), ("TIFF", grey, {}),
                             ("PNG", np.stack([grey] * 3, axis=2), {}), ("PNG", grey.astype(np.uint16) * 250, {}),
                             ("PNG", grey > 128, {})):
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format=fmt, **kwargs)
        seeds.append(buf.getvalue())
    return seeds


SEED_IMAGES = _seed_images()

SEED_JSON = [
    {"shapes": [{"shape_type": "polygon", "label": "artery", "points": [[1, 1], [15, 2], [12, 18]]}],
     "imagePath": "f.png", "imageWidth": 20, "imageHeight": 24},
    [{"image": "f.png", "mask": [[1, 1, 15, 2, 12, 18]], "text": ["blood vessel"]}],
    {"images": [{"id": 1, "file_name": "f.png", "width": 20, "height": 24}],
     "annotations": [{"image_id": 1, "category_id": 1, "segmentation": [[1, 1, 15, 2, 12, 18]]}],
     "categories": [{"id": 1, "name": "vessel"}]},
]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed file with a few byte flips, insertions, deletions or a truncation."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "splice"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and data:
            del data[at:at + draw(st.integers(1, 16))]
        elif op == "truncate":
            del data[at:]
        elif op == "splice":  # header fields of other sizes: 4 bytes of a big number
            data[at:at + 4] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "big")
    return bytes(data)


image_bytes = st.one_of(st.binary(max_size=256), mutated(SEED_IMAGES))

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["shapes", "points", "shape_type", "imageWidth", "imageHeight", "imagePath", "images",
                         "annotations", "categories", "id", "image_id", "category_id", "file_name", "width",
                         "height", "segmentation", "image", "mask", "text", "label", "name"]) | st.text(max_size=4),
        children, max_size=5),
    max_leaves=30,
)


def _mutated_json_text(draw) -> bytes:
    seed = json.dumps(draw(st.sampled_from(SEED_JSON))).encode()
    return draw(mutated([seed]))


json_files = st.one_of(
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.builds(lambda seed, v: _graft(seed, v), st.sampled_from(SEED_JSON), json_values),
    st.composite(lambda draw: _mutated_json_text(draw))(),
    st.binary(max_size=128),
)


def _graft(seed, value):
    """A valid document with one value replaced by a random one (a realistic broken file)."""
    doc = json.loads(json.dumps(seed))
    if isinstance(doc, dict) and "shapes" in doc:
        doc["shapes"][0]["points"] = value
        doc["imageWidth"] = value if isinstance(value, (int, float)) else doc["imageWidth"]
    elif isinstance(doc, list):
        doc[0]["mask"] = value
    else:
        doc["images"][0]["id"] = value
        doc["annotations"][0]["segmentation"] = value
    return json.dumps(doc, allow_nan=True).encode()


@_bounded(300)
@given(image_bytes)
def test_image_codecs_raise_only_input_errors(data):
    for read in (imaging.probe_image, imaging.image_size, imaging.decode_image, imaging.decode_mask):
        try:
            read(data, "fuzz.png")
        except InputError as exc:
            assert str(exc).startswith("fuzz.png: ") and "\n" not in str(exc)


@_bounded(300)
@given(json_files)
def test_annotation_loaders_never_raise(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "annotations.json"
        path.write_bytes(data)
        _flavour, anns, issues = load_annotations(path)
    for issue in issues:
        assert issue.severity in ("error", "warning", "info") and "\n" not in issue.message
        issue.message.encode("utf-8")  # storable and printable: no lone surrogates
    for ann in anns:
        ann.image.encode("utf-8")


coordinates = st.one_of(st.floats(-50, 80), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([1e18, -1e18, 1e308, -1e308, 0.5, 31.0, 32.0]))


@_bounded(300)
@given(st.lists(st.lists(st.tuples(coordinates, coordinates), max_size=12), max_size=4),
       st.tuples(st.integers(1, 40), st.integers(1, 40)))
def test_rasterize_is_total_and_bounded(polygons, shape):
    """Any coordinates (far outside, huge, inf, nan) give a mask of the asked shape, never an error
    and never work beyond the image (a vertex at y = 1e18 once asked for 1e18 rows)."""
    mask = rasterize_polygons([np.array(p, dtype=np.float64).reshape(-1, 2) for p in polygons], shape)
    assert mask.shape == shape and mask.dtype == bool


@pytest.mark.slow
@_bounded(60)
@given(image=image_bytes, mask=image_bytes, labelme=json_files, root_json=json_files)
def test_scan_of_a_folder_of_mutated_files_never_raises(image, mask, labelme, root_json):
    tmp = Path(tempfile.mkdtemp())
    try:
        (tmp / "good.png").write_bytes(SEED_IMAGES[0])
        (tmp / "bad.png").write_bytes(image)
        (tmp / "bad_mask.png").write_bytes(mask)
        (tmp / "good.json").write_bytes(labelme)
        (tmp / "annotations.json").write_bytes(root_json)
        result = scan_dataset(tmp)
        names = sorted(f.name for f in result.frames)
        assert "good.png" in names or image == SEED_IMAGES[0]  # the good frame is never lost (unless a duplicate)
        for frame in result.frames:
            if frame.error is not None:
                frame.error.encode("utf-8")
                assert "\n" not in frame.error
        Console(file=io.StringIO(), width=160).print(issues_table(result.issues))
    finally:
        shutil.rmtree(tmp)
