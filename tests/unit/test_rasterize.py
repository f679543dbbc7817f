"""The one polygon rule: pixel centres inside or on the edge, union over polygons, as skimage draws."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import polygon as sk_polygon

from sa2va_queue.producer.rasterize import rasterize_polygons


def _skimage(poly: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    rows, cols = sk_polygon(poly[:, 1], poly[:, 0], shape=shape)
    mask[rows, cols] = True
    return mask


def _square(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=float)


def test_square_between_pixel_centres_covers_exactly_the_centres_inside() -> None:
    mask = rasterize_polygons([_square(2.5, 3.5, 12.5, 8.5)], (20, 20))
    assert mask.sum() == 10 * 5
    expected = np.zeros((20, 20), dtype=bool)
    expected[4:9, 3:13] = True  # rows 4..8 (y), columns 3..12 (x)
    assert np.array_equal(mask, expected)


def test_centres_on_the_edge_count_as_inside() -> None:
    mask = rasterize_polygons([_square(2, 2, 12, 12)], (20, 20))
    assert mask.sum() == 11 * 11
    assert mask[2, 2] and mask[12, 12] and not mask[13, 12]


def test_union_of_two_overlapping_squares() -> None:
    a, b = _square(0.5, 0.5, 10.5, 10.5), _square(5.5, 5.5, 15.5, 15.5)
    mask = rasterize_polygons([a, b], (20, 20))
    assert mask.sum() == 100 + 100 - 25
    assert np.array_equal(mask, rasterize_polygons([a], (20, 20)) | rasterize_polygons([b], (20, 20)))


def test_parts_outside_the_image_are_cut_and_short_polygons_add_nothing() -> None:
    mask = rasterize_polygons([_square(-5.5, -5.5, 3.5, 2.5), np.array([[1.0, 1.0], [9.0, 9.0]])], (10, 10))
    assert mask.sum() == 4 * 3
    assert mask[:3, :4].all()


@pytest.mark.parametrize("kind", ["float", "star_quarter_grid"])
def test_identical_to_skimage_draw_polygon(kind: str) -> None:
    rng = np.random.default_rng(7)
    for _ in range(150):
        n = int(rng.integers(3, 14))
        if kind == "float":  # self-intersections allowed; no centre lies exactly on two edges
            poly = rng.uniform(-4, 34, (n, 2))
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, n))
            radius = rng.uniform(3, 14, n)
            poly = np.c_[15 + radius * np.cos(angles), 15 + radius * np.sin(angles)]
            poly = np.round(poly * 4) / 4  # many centres exactly on edges and vertices
        assert np.array_equal(rasterize_polygons([poly], (30, 31)), _skimage(poly, (30, 31))), poly.tolist()


@pytest.mark.parametrize("poly", [
    np.array([[10, 0], [20, 10], [10, 20], [0, 10]], dtype=float),  # diamond: centres on all four edges
    np.array([[0, 0], [8, 0], [8, 4], [0, 8]], dtype=float),
    np.array([[3, 1], [17, 9], [5, 18]], dtype=float),
])
def test_integer_vertices_identical_to_skimage(poly: np.ndarray) -> None:
    assert np.array_equal(rasterize_polygons([poly], (22, 22)), _skimage(poly, (22, 22)))


def test_long_contour_matches_skimage() -> None:
    t = np.linspace(0, 2 * np.pi, 400, endpoint=False) + 0.01  # no vertex within 1e-14 px of a centre
    radius = 40 + 6 * np.sin(11 * t)
    poly = np.c_[60 + radius * np.cos(t), 60 + radius * np.sin(t)]
    assert np.array_equal(rasterize_polygons([poly], (120, 120)), _skimage(poly, (120, 120)))
