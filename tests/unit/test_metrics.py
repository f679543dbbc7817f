"""sa2va_queue.core.metrics: hand-computed values, the empty-mask rules, clDice, the threshold sweep."""

from __future__ import annotations

import numpy as np
import pytest

from sa2va_queue.db.models import Metrics
from sa2va_queue.core.metrics import METRIC_COLUMNS, METRIC_NAMES, compute_metrics, dice_at_thresholds


def _mask(shape: tuple[int, int], *pixels: tuple[int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def test_keys_are_exactly_the_metrics_columns() -> None:
    # dice_sweep is stored beside the metrics (dice_sweep_quantized), not returned by compute_metrics
    columns = {c.name for c in Metrics.__table__.columns} - {"id", "job_id", "prediction_id", "created_at", "dice_sweep"}
    out = compute_metrics(_mask((2, 2), (0, 0)), _mask((2, 2), (0, 0)))
    assert set(out) == columns == set(METRIC_COLUMNS)
    assert set(METRIC_NAMES) < set(METRIC_COLUMNS) and METRIC_NAMES[0] == "dice"


def test_hand_computed_counts() -> None:
    # 4x4 = 16 pixels. pred: 4 px, gt: 3 px, overlap 2 -> TP=2, FP=2, FN=1, TN=11
    pred = _mask((4, 4), (0, 0), (0, 1), (1, 0), (3, 3))
    gt = _mask((4, 4), (0, 0), (0, 1), (2, 2))
    m = compute_metrics(pred, gt)
    assert m["iou"] == pytest.approx(2 / 5)
    assert m["dice"] == pytest.approx(4 / 7)
    assert m["precision"] == pytest.approx(2 / 4)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(11 / 13)
    assert m["accuracy"] == pytest.approx(13 / 16)
    assert m["pred_fraction"] == pytest.approx(4 / 16)
    assert m["true_fraction"] == pytest.approx(3 / 16)
    assert m["exact_match"] is False
    assert all(type(m[k]) is float for k in METRIC_NAMES)  # plain floats: SQL drivers need no numpy


def test_identical_masks_are_perfect_and_exact() -> None:
    gt = _mask((5, 5), (1, 1), (1, 2), (1, 3))
    m = compute_metrics(gt.copy(), gt)
    assert m["dice"] == m["iou"] == m["precision"] == m["recall"] == m["cldice"] == 1.0
    assert m["hd95"] == m["assd"] == 0.0
    assert m["exact_match"] is True


def test_both_empty() -> None:
    z = np.zeros((3, 4), bool)
    m = compute_metrics(z, z)
    for k in ("iou", "dice", "precision", "recall", "cldice", "specificity", "accuracy"):
        assert m[k] == 1.0, k
    assert m["exact_match"] is True and m["pred_fraction"] == 0.0
    assert m["hd95"] == m["assd"] == 0.0


def test_gt_empty_prediction_not() -> None:
    m = compute_metrics(_mask((3, 4), (0, 0), (1, 1)), np.zeros((3, 4), bool))
    assert m["iou"] == m["dice"] == m["precision"] == m["cldice"] == 0.0
    assert m["recall"] is None and m["hd95"] is None and m["assd"] is None
    assert m["specificity"] == pytest.approx(10 / 12)
    assert m["accuracy"] == pytest.approx(10 / 12)
    assert m["exact_match"] is False


def test_prediction_empty_gt_not() -> None:
    m = compute_metrics(np.zeros((3, 4), bool), _mask((3, 4), (2, 3)))
    assert m["iou"] == m["dice"] == m["recall"] == m["cldice"] == 0.0
    assert m["precision"] is None and m["hd95"] is None and m["assd"] is None
    assert m["specificity"] == 1.0
    assert m["accuracy"] == pytest.approx(11 / 12)


def test_specificity_undefined_only_when_gt_covers_everything() -> None:
    full = np.ones((3, 3), bool)
    m = compute_metrics(full.copy(), full)
    assert m["specificity"] is None and m["accuracy"] == 1.0 and m["dice"] == 1.0
    m2 = compute_metrics(_mask((3, 3), (0, 0)), full)
    assert m2["specificity"] is None and m2["recall"] == pytest.approx(1 / 9)


def test_cldice_thin_lines() -> None:
    # A 1-pixel line is its own skeleton. pred covers half the GT line: Tprec=1, Tsens=0.5.
    gt = np.zeros((10, 20), bool)
    gt[5, :] = True
    pred = np.zeros_like(gt)
    pred[5, :10] = True
    assert compute_metrics(pred, gt)["cldice"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    shifted = np.roll(gt, 1, axis=0)  # parallel line one row down: no overlap at all
    assert compute_metrics(shifted, gt)["cldice"] == 0.0


def test_cldice_forgives_a_one_pixel_shift_of_a_thick_vessel() -> None:
    # 3-pixel-wide bar and the same bar shifted one row: each centreline lies inside the other mask,
    # so clDice stays near 1 while Dice drops to 2/3.
    gt = np.zeros((12, 30), bool)
    gt[4:7, 3:27] = True
    pred = np.roll(gt, 1, axis=0)
    m = compute_metrics(pred, gt)
    assert m["dice"] == pytest.approx(2 / 3)
    assert m["cldice"] > 0.9 > m["dice"]
    far = np.roll(gt, 5, axis=0)
    assert compute_metrics(far, gt)["cldice"] == 0.0


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        compute_metrics(np.zeros((3, 4), bool), np.zeros((4, 3), bool))


def test_float_mask_is_refused_integer_accepted() -> None:
    with pytest.raises(ValueError, match="threshold"):
        compute_metrics(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool))
    assert compute_metrics(np.array([[0, 255]], np.uint8), np.array([[False, True]]))["dice"] == 1.0


def test_dice_at_thresholds_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    prob = rng.random((40, 50)).astype(np.float32)
    prob[0, :5] = np.float32(0.5)  # values exactly at a threshold: '>' must leave them out
    gt = rng.random((40, 50)) > 0.6
    ts = np.linspace(0.05, 0.95, 19)
    got = dice_at_thresholds(prob, gt, ts)
    # Python floats, as the worker thresholds: NumPy then compares in the map's float32.
    want = [compute_metrics(prob > float(t), gt)["dice"] for t in ts]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_dice_at_thresholds_empty_rules() -> None:
    prob = np.full((4, 4), 0.2, np.float32)
    empty = np.zeros((4, 4), bool)
    np.testing.assert_array_equal(dice_at_thresholds(prob, empty, [0.1, 0.5]), [0.0, 1.0])
    gt = empty.copy()
    gt[0, 0] = True
    np.testing.assert_array_equal(dice_at_thresholds(prob, gt, [0.5]), [0.0])
    with pytest.raises(ValueError, match="shape"):
        dice_at_thresholds(prob, np.zeros((3, 3), bool), [0.5])


def test_surface_distances_hand_computed() -> None:
    """Two 3x3 squares, the second shifted 2 columns right: each square's surface is its 8 border pixels.
    From one square to the other: 3 pixels at 0 (the shared column), 2 at 1, 3 at 2 -> mean 1.0;
    pooled both ways, 16 distances of which 6 are 2 -> 95th percentile 2."""
    a = np.zeros((10, 10), bool)
    a[2:5, 2:5] = True
    b = np.roll(a, 2, axis=1)
    m = compute_metrics(a, b)
    assert m["assd"] == pytest.approx(1.0) and m["hd95"] == pytest.approx(2.0)


def test_surface_distances_of_a_far_false_positive_and_at_the_image_edge() -> None:
    gt = np.zeros((40, 40), bool)
    gt[0:5, 0:40] = True  # touches the image edge: its edge pixels are surface
    pred = gt.copy()
    pred[30, 30] = True  # one stray pixel 26 rows below the vessel's surface
    m = compute_metrics(pred, gt)
    # P's surface: the 40 + 2 * 3 + 40 border pixels of the band (all at 0) and the stray pixel (26)
    d = np.array([0.0] * 86 + [26.0])
    assert m["assd"] == pytest.approx((d.mean() + 0.0) / 2)
    assert m["hd95"] == pytest.approx(float(np.percentile(np.concatenate([d, np.zeros(86)]), 95)))


def test_surface_distances_match_a_full_frame_brute_force() -> None:
    """The bounding-box shortcut gives the same numbers as pairwise distances over whole surfaces."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(3)
    p = ndimage.binary_dilation(rng.random((30, 30)) > 0.97, iterations=2)
    g = ndimage.binary_dilation(rng.random((30, 30)) > 0.97, iterations=1)
    cross = ndimage.generate_binary_structure(2, 1)
    sp = np.argwhere(p & ~ndimage.binary_erosion(p, cross, border_value=0))
    sg = np.argwhere(g & ~ndimage.binary_erosion(g, cross, border_value=0))
    dist = cdist(sp, sg)
    d_pg, d_gp = dist.min(axis=1), dist.min(axis=0)
    m = compute_metrics(p, g)
    assert m["hd95"] == pytest.approx(float(np.percentile(np.concatenate([d_pg, d_gp]), 95)))
    assert m["assd"] == pytest.approx((d_pg.mean() + d_gp.mean()) / 2)


@pytest.mark.parametrize("seed", range(6))
def test_surface_distances_equal_on_both_paths(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Thin surfaces go through a k-d tree, noise-like ones through distance transforms: the same
    numbers, bit for bit, whichever path a mask takes (forced both ways here)."""
    from scipy import ndimage

    from sa2va_queue.core import metrics

    rng = np.random.default_rng(seed)
    g = ndimage.binary_dilation(rng.random((64, 80)) > 0.995, iterations=3)
    g[rng.integers(0, 64), :] = True  # a vessel-like line across the frame
    p = np.roll(ndimage.binary_dilation(g), int(rng.integers(-3, 4)), axis=1) | (rng.random((64, 80)) > 0.99)
    monkeypatch.setattr(metrics, "KDTREE_SURFACE_SHARE", 0.0)
    by_transform = metrics._surface_distances(p, g)
    monkeypatch.setattr(metrics, "KDTREE_SURFACE_SHARE", 2.0)
    by_tree = metrics._surface_distances(p, g)
    assert by_tree == by_transform and by_tree[0] > 0


def test_metrics_stay_fast_on_a_vessel_like_frame() -> None:
    import time

    from skimage.draw import line

    gt = np.zeros((512, 512), bool)
    for r0, c0, r1, c1 in ((10, 10, 500, 300), (50, 400, 480, 20), (256, 0, 256, 511)):
        gt[line(r0, c0, r1, c1)] = True
    from scipy import ndimage

    gt = ndimage.binary_dilation(gt, iterations=3)
    pred = np.roll(gt, 2, axis=0)
    compute_metrics(pred, gt)  # warm-up
    start = time.perf_counter()
    m = compute_metrics(pred, gt)
    assert time.perf_counter() - start < 1.0  # per job; ~0.1 s here, shared cores allowed for
    assert 0 < m["hd95"] <= 2.0 + 1e-9 and 0 < m["assd"] < 2.0


def test_the_stored_sweep_equals_the_decoded_maps_sweep_bit_for_bit() -> None:
    from sa2va_queue.core.imaging import decode_probability, encode_probability, quantize_probability
    from sa2va_queue.core.metrics import SWEEP_GRID, dice_at_thresholds, dice_sweep_quantized

    rng = np.random.default_rng(3)
    for trial in range(12):
        shape = tuple(int(x) for x in rng.integers(1, 90, 2))
        prob = rng.random(shape).astype(np.float32)
        if trial % 3 == 0:
            prob = (np.round(prob * 100) / 100).astype(np.float32)  # values exactly on the grid
        gt = rng.random(shape) > (0.4 if trial != 4 else 2.0)  # trial 4: empty ground truth
        t = float(rng.choice([0.5, 0.437, 0.01, 0.99]))
        fast = dice_sweep_quantized(quantize_probability(prob), gt, t)
        slow = dice_at_thresholds(decode_probability(encode_probability(prob)), gt, np.append(SWEEP_GRID, t))
        assert fast.shape == (SWEEP_GRID.size + 1,) and np.array_equal(fast, slow)
    with pytest.raises(ValueError, match="uint16"):
        dice_sweep_quantized(np.zeros((2, 2), np.float32), np.zeros((2, 2), bool), 0.5)
