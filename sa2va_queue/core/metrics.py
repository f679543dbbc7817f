"""Per-frame segmentation metrics, computed from a stored binary prediction and its ground truth.

Counts: TP = pred & gt, FP = pred & ~gt, FN = ~pred & gt, TN = the rest; N = all pixels.

    iou          TP / (TP + FP + FN)
    dice         2 TP / (2 TP + FP + FN)
    precision    TP / (TP + FP)
    recall       TP / (TP + FN)
    specificity  TN / (TN + FP)
    accuracy     (TP + TN) / N
    cldice       2 Tprec Tsens / (Tprec + Tsens), with skeletons S() from skimage skeletonize:
                 Tprec = |S(P) & G| / |S(P)|,  Tsens = |S(G) & P| / |S(G)|   (0 when both are 0)
    hd95, assd   surface distances in pixels. A mask's surface is its foreground pixels with a
                 background 4-neighbour (or on the image border); d(a, B) is the Euclidean distance
                 from surface pixel a to the nearest surface pixel of B (scipy distance transform).
                 With D = {d(p, G) for p in surf(P)} and E = {d(g, P) for g in surf(G)}:
                 hd95 = 95th percentile of D and E pooled; assd = (mean D + mean E) / 2
                 (the medpy definitions). Lower is better; 0 when the masks are equal.

Empty masks. None means "undefined for this frame": it is stored as NULL, left out of means and
counted separately (n_undefined) by the report.

    | case                      | iou | dice | precision | recall | cldice | hd95, assd |
    |---------------------------|-----|------|-----------|--------|--------|------------|
    | both empty                | 1.0 | 1.0  | 1.0       | 1.0    | 1.0    | 0.0        |
    | GT empty, prediction not  | 0.0 | 0.0  | 0.0       | None   | 0.0    | None       |
    | prediction empty, GT not  | 0.0 | 0.0  | None      | 0.0    | 0.0    | None       |
    | both non-empty            | formula above                                       |

    A distance to an empty mask is infinite, so hd95 and assd are undefined (NULL, counted, not
    averaged) when exactly one mask is empty; reports count those frames next to the means.

    specificity is None only when the GT covers every pixel (no negatives); accuracy is always
    defined. pred_fraction / true_fraction are the foreground fractions; exact_match is True when
    the two masks are equal pixel for pixel (including both empty).

A probability map becomes a mask with `prob > threshold` (strict, as worker.backends.base does);
`dice_at_thresholds` follows the same rule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

# Float metrics in the order tables show them (pred_fraction / true_fraction are descriptive only).
METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "cldice", "hd95",
                                  "assd")
LOWER_IS_BETTER: frozenset[str] = frozenset({"hd95", "assd"})  # distances in px; the rest are overlaps
# Every key compute_metrics returns: exactly the columns of db.models.Metrics.
METRIC_COLUMNS: tuple[str, ...] = METRIC_NAMES + ("pred_fraction", "true_fraction", "exact_match")


def compute_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float | None | bool]:
    """All Metrics columns for one frame; see the module docstring for the empty-mask rules."""
    p = _as_mask(pred, "prediction")
    g = _as_mask(gt, "ground truth")
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} differs from ground truth shape {g.shape}")
    if p.ndim != 2 or p.size == 0:
        raise ValueError(f"masks must be non-empty 2-D arrays, got shape {p.shape}")

    n = p.size
    tp = int(np.count_nonzero(p & g))
    n_pred = int(np.count_nonzero(p))
    n_true = int(np.count_nonzero(g))
    fp, fn = n_pred - tp, n_true - tp
    tn = n - tp - fp - fn

    iou: float | None
    dice: float | None
    precision: float | None
    recall: float | None
    cldice: float | None
    hd95: float | None = None
    assd: float | None = None
    if n_pred == 0 and n_true == 0:
        iou = dice = precision = recall = cldice = 1.0
        hd95 = assd = 0.0
    elif n_true == 0:
        iou = dice = precision = cldice = 0.0
        recall = None
    elif n_pred == 0:
        iou = dice = recall = cldice = 0.0
        precision = None
    else:
        iou = tp / (tp + fp + fn)
        dice = 2 * tp / (n_pred + n_true)
        precision = tp / n_pred
        recall = tp / n_true
        cldice = _cldice(p, g)
        hd95, assd = (0.0, 0.0) if fp == 0 and fn == 0 else _surface_distances(p, g)

    return {
        "iou": iou,
        "dice": dice,
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp > 0 else None,
        "accuracy": (tp + tn) / n,
        "cldice": cldice,
        "hd95": hd95,
        "assd": assd,
        "pred_fraction": n_pred / n,
        "true_fraction": n_true / n,
        "exact_match": bool(fp == 0 and fn == 0),
    }


def dice_at_thresholds(prob: np.ndarray, gt: np.ndarray, thresholds: Sequence[float] | np.ndarray) -> np.ndarray:
    """Dice of `prob > t` against `gt` for every t, in one sort instead of one pass per threshold.

    Same empty rules as compute_metrics: both empty -> 1.0, exactly one empty -> 0.0.
    """
    prob = np.asarray(prob)
    g = _as_mask(gt, "ground truth")
    if prob.shape != g.shape:
        raise ValueError(f"probability shape {prob.shape} differs from ground truth shape {g.shape}")
    if not np.issubdtype(prob.dtype, np.floating):
        prob = prob.astype(np.float64)
    # Compare in the map's own dtype, as `prob > t` with a Python float does in the worker.
    t = np.asarray(thresholds, dtype=np.float64).astype(prob.dtype).ravel()
    flat = prob.ravel()
    all_sorted = np.sort(flat)
    fg_sorted = np.sort(flat[g.ravel()])
    n_pred = all_sorted.size - np.searchsorted(all_sorted, t, side="right")  # count of prob > t
    tp = fg_sorted.size - np.searchsorted(fg_sorted, t, side="right")
    denom = n_pred + fg_sorted.size
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)
    return dice.astype(np.float64)


# Thresholds at which the worker stores each frame's Dice (metrics.dice_sweep), so that a report's
# threshold sweep and a calibration read numbers instead of decoding every probability map.
SWEEP_GRID: np.ndarray = np.round(np.arange(0.01, 1.0, 0.01), 2)  # 0.01 ... 0.99


def dice_sweep_quantized(quantized: np.ndarray, gt: np.ndarray, threshold: float) -> np.ndarray:
    """Dice at every SWEEP_GRID threshold, then at `threshold`, of a quantized probability map
    (imaging.quantize_probability) against `gt`.

    Equal, bit for bit, to dice_at_thresholds on the map as decode_probability reads it back (the
    report's path): the 65536 levels are compared in float32 exactly as there, and counting pixels
    per level (two bincounts) replaces the sort: about 2 ms instead of 15 ms at 512x512."""
    q = np.asarray(quantized)
    g = _as_mask(gt, "ground truth")
    if q.dtype != np.uint16 or q.shape != g.shape:
        raise ValueError(f"need a uint16 map of the ground truth's shape {g.shape}, got {q.dtype} {q.shape}")
    levels = np.arange(65536, dtype=np.float32) / 65535.0  # decode_probability's values, in order
    t = np.append(SWEEP_GRID, threshold).astype(np.float32)
    first = np.searchsorted(levels, t, side="right")  # prob > t  <=>  level index >= first
    per_all = np.bincount(q.ravel(), minlength=65536)
    per_fg = np.bincount(q[g], minlength=65536)
    above_all = np.concatenate([np.cumsum(per_all[::-1])[::-1], [0]])  # pixels at level >= k
    above_fg = np.concatenate([np.cumsum(per_fg[::-1])[::-1], [0]])
    n_pred, tp = above_all[first], above_fg[first]
    denom = n_pred + int(g.sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1), 1.0)
    return dice.astype(np.float64)


def _cldice(p: np.ndarray, g: np.ndarray) -> float:
    # skimage and scipy.ndimage are imported where used: a report or a producer that only reads
    # metric names and thresholds should not pay their 0.3 s of import
    from skimage.morphology import skeletonize

    sp, sg = skeletonize(p), skeletonize(g)
    # skeletonize keeps at least one pixel per component; the fallback only guards odd inputs.
    if not sp.any():
        sp = p
    if not sg.any():
        sg = g
    tprec = np.count_nonzero(sp & g) / np.count_nonzero(sp)
    tsens = np.count_nonzero(sg & p) / np.count_nonzero(sg)
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))


def _surface_distances(p: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """(hd95, assd) of two non-empty masks. Computed in the box around both masks grown by one pixel
    (every surface pixel lies in it, so distances are exact, and the transforms stay small)."""
    from scipy import ndimage

    union = p | g
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    box = (slice(max(rows[0] - 1, 0), rows[-1] + 2), slice(max(cols[0] - 1, 0), cols[-1] + 2))
    sp, sg = _surface(p[box]), _surface(g[box])
    if np.count_nonzero(sp) + np.count_nonzero(sg) < sp.size * KDTREE_SURFACE_SHARE:
        # thin surfaces (vessel masks): nearest surface pixel by k-d tree, cost by surface pixels;
        # the same exact distances in the same (row-major) order as the transforms below
        from scipy.spatial import cKDTree

        at_p, at_g = np.argwhere(sp), np.argwhere(sg)
        to_g = cKDTree(at_g).query(at_p)[0]
        to_p = cKDTree(at_p).query(at_g)[0]
    else:  # noise-like masks: two distance transforms of the box, cost by area
        to_g = ndimage.distance_transform_edt(~sg)[sp]  # from each surface pixel of P to the nearest of G
        to_p = ndimage.distance_transform_edt(~sp)[sg]
    hd95 = float(np.percentile(np.concatenate([to_g, to_p]), 95))
    return hd95, float((to_g.mean() + to_p.mean()) / 2)


# Surface pixels below this share of the box: k-d tree queries (about 0.7-0.9 us per surface pixel)
# beat two distance transforms (about 0.1 us per box pixel); chosen on the 2-core VM (2026-12-07) with
# a synthetic frame's mask against a shifted, dilated copy (26.7 -> 10.5 ms) and a noise map (EDT kept).
KDTREE_SURFACE_SHARE = 1 / 8


def _surface(m: np.ndarray) -> np.ndarray:
    """Foreground pixels with a background 4-neighbour. The grown box's edge is background or the
    image's edge, so erosion's border_value=0 makes image-edge pixels surface, as medpy does."""
    from scipy import ndimage

    return m & ~ndimage.binary_erosion(m, structure=_CROSS, border_value=0)


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)


def _as_mask(arr: np.ndarray, what: str) -> np.ndarray:
    """Bool view of a mask; integers are accepted (non-zero = foreground), floats are not."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.integer):
        return a != 0
    raise ValueError(f"{what} must be a bool (or integer) mask, got dtype {a.dtype}; threshold it first")


# The leak guard (report and `status`): ground truth leaking into predictions shows as frames that
# are near-perfect, all of them or a share of them.
LEAK_DICE = 0.99  # a Dice above this on real angiograms is far beyond inter-observer agreement
# A partial leak: a share of frames near-perfect while the others are ordinary. Flag the run when at
# least LEAK_MIN_FRAMES frames and LEAK_FRACTION of the scored ones reach LEAK_DICE while the mean of
# the rest stays LEAK_GAP or more below it (6 leaked frames among 24 honest ones at 0.6 is flagged).
LEAK_FRACTION = 0.1
LEAK_MIN_FRAMES = 2
LEAK_GAP = 0.1


def leak_suspected(n_scored: int, n_near: int, mean_dice: float | None,
                   mean_rest: float | None) -> tuple[bool, bool]:
    """(mean flag, partial-leak flag) of a run: mean Dice above LEAK_DICE; or at least
    LEAK_MIN_FRAMES frames and LEAK_FRACTION of them at Dice >= LEAK_DICE while the rest average
    LEAK_GAP or more below."""
    mean_flag = n_scored > 0 and mean_dice is not None and mean_dice > LEAK_DICE
    partial = (n_near >= LEAK_MIN_FRAMES and n_scored > 0 and n_near / n_scored >= LEAK_FRACTION
               and mean_rest is not None and mean_rest <= LEAK_DICE - LEAK_GAP)
    return bool(mean_flag), bool(partial)
