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

Empty masks. None means "undefined for this frame": it is stored as NULL, left out of means and
counted separately (n_undefined) by the report.

    | case                      | iou | dice | precision | recall | cldice |
    |---------------------------|-----|------|-----------|--------|--------|
    | both empty                | 1.0 | 1.0  | 1.0       | 1.0    | 1.0    |
    | GT empty, prediction not  | 0.0 | 0.0  | 0.0       | None   | 0.0    |
    | prediction empty, GT not  | 0.0 | 0.0  | None      | 0.0    | 0.0    |
    | both non-empty            | formula above                                |

    specificity is None only when the GT covers every pixel (no negatives); accuracy is always
    defined. pred_fraction / true_fraction are the foreground fractions; exact_match is True when
    the two masks are equal pixel for pixel (including both empty).

A probability map becomes a mask with `prob > threshold` (strict, as worker.backends.base does);
`dice_at_thresholds` follows the same rule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from skimage.morphology import skeletonize

# Float metrics in the order tables show them (pred_fraction / true_fraction are descriptive only).
METRIC_NAMES: tuple[str, ...] = ("dice", "iou", "precision", "recall", "specificity", "accuracy", "cldice")
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
    if n_pred == 0 and n_true == 0:
        iou = dice = precision = recall = cldice = 1.0
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

    return {
        "iou": iou,
        "dice": dice,
        "precision": precision,
        "recall": recall,
        "specificity": tn / (tn + fp) if tn + fp > 0 else None,
        "accuracy": (tp + tn) / n,
        "cldice": cldice,
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


def _cldice(p: np.ndarray, g: np.ndarray) -> float:
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


def _as_mask(arr: np.ndarray, what: str) -> np.ndarray:
    """Bool view of a mask; integers are accepted (non-zero = foreground), floats are not."""
    a = np.asarray(arr)
    if a.dtype == bool:
        return a
    if np.issubdtype(a.dtype, np.integer):
        return a != 0
    raise ValueError(f"{what} must be a bool (or integer) mask, got dtype {a.dtype}; threshold it first")
