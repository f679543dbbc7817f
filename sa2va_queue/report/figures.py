"""Report figures as PNG bytes.

Built on matplotlib's object API with the Agg canvas (no pyplot): no global figure state, no
display needed, safe in worker threads. 150 dpi: a 512 px frame gets about 1 screen pixel per image
pixel in a case figure, so a 2 px vessel is judged on its own pixels, and legend text is ~20 px high.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

DPI = 150
# Difference-map colours (RGB in [0, 1]). Agreement is neutral so the errors stand out; the two
# errors are orange and blue, the pair that stays apart under red-green colour deficiency.
TP_COLOUR = (0.88, 0.88, 0.88)
FP_COLOUR = (1.00, 0.45, 0.00)
FN_COLOUR = (0.00, 0.55, 1.00)
ZOOM_MIN = 96  # px: the zoom crop is at least this wide (or the frame, if smaller)
GT_OVERLAY = (0.15, 0.55, 1.00)
PRED_OVERLAY = (1.00, 0.60, 0.05)


def case_figure(image_rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str) -> bytes:
    """Six panels. Top: image | ground-truth overlay | prediction overlay. Bottom: difference map
    (TP grey, FP orange, FN blue over the dimmed image, the zoom box outlined) | the same map zoomed
    where the errors are densest (error_cluster_box) | the image zoomed there (pixels as squares)."""
    image = np.asarray(image_rgb)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    if not (image.shape[:2] == g.shape == p.shape):
        raise ValueError(f"image {image.shape[:2]}, ground truth {g.shape} and prediction {p.shape} differ in size")
    base = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else np.clip(image.astype(np.float32), 0, 1)
    diff = _difference(base, g, p)
    (r0, r1), (c0, c1) = box = error_cluster_box(g, p)
    tp, fp, fn = int((g & p).sum()), int((~g & p).sum()), int((g & ~p).sum())

    fig = Figure(figsize=(12, 8.6), dpi=DPI)
    axes = fig.subplots(2, 3)
    panels = [
        ("image", base, "antialiased"),
        ("ground truth (blue)", _overlay(base, g, GT_OVERLAY), "antialiased"),
        ("prediction (orange)", _overlay(base, p, PRED_OVERLAY), "antialiased"),
        ("difference", diff, "antialiased"),
        (f"zoom: most errors ({c1 - c0}x{r1 - r0} px)", diff[r0:r1, c0:c1], "nearest"),
        ("image, same zoom", base[r0:r1, c0:c1], "nearest"),
    ]
    for ax, (label, arr, interp) in zip(axes.ravel(), panels):
        ax.imshow(arr, vmin=0, vmax=1, interpolation=interp)
        ax.set_title(label, fontsize=11)
        ax.set_axis_off()
    if box != ((0, g.shape[0]), (0, g.shape[1])):
        axes[1, 0].add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, edgecolor="yellow",
                                       linewidth=1.5))
    fig.legend(
        handles=[
            Patch(color=TP_COLOUR, label=f"TP: both ({tp} px)"),
            Patch(color=FP_COLOUR, label=f"FP: predicted only ({fp} px)"),
            Patch(color=FN_COLOUR, label=f"FN: missed ({fn} px)"),
        ],
        loc="lower center", ncol=3, fontsize=11, frameon=False,
    )
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97))
    return _png(fig)


def error_cluster_box(g: np.ndarray, p: np.ndarray,
                      min_size: int = ZOOM_MIN) -> tuple[tuple[int, int], tuple[int, int]]:
    """((row0, row1), (col0, col1)) of the square crop holding the most error pixels (FP or FN).

    The crop is a quarter of the frame's shorter side, at least `min_size` (at most the frame); on
    vessel trees the errors of one frame often touch along the whole tree, so "most errors in a
    window" finds the worst region where connected components would return the whole frame.
    Without errors it is the whole frame.
    """
    h, w = g.shape
    errors = g != p
    if not errors.any():
        return (0, h), (0, w)
    side = min(max(min_size, min(h, w) // 4), h, w)
    # window sums from the integral image: count[r, c] = errors in rows r..r+side-1, cols c..c+side-1
    integral = np.pad(errors.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    count = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side] + integral[:-side, :-side])
    r, c = np.unravel_index(int(np.argmax(count)), count.shape)
    return (int(r), int(r) + side), (int(c), int(c) + side)


def dice_histogram(dices: Sequence[float] | np.ndarray) -> bytes:
    """Histogram of per-frame Dice on [0, 1] with the mean and median marked."""
    x = _finite(dices)
    fig = Figure(figsize=(6, 3.6), dpi=DPI)
    ax = fig.subplots()
    if x.size:
        ax.hist(x, bins=np.linspace(0, 1, 26), color="#4a78b5", edgecolor="white")
        ax.axvline(float(x.mean()), color="#d62728", label=f"mean {x.mean():.3f}")
        ax.axvline(float(np.median(x)), color="#2ca02c", linestyle="--", label=f"median {np.median(x):.3f}")
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no frames with a defined Dice", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlim(0, 1)
    ax.set_xlabel("Dice")
    ax.set_ylabel("frames")
    ax.set_title(f"Per-frame Dice (n={x.size})", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def threshold_sweep_figure(
    thresholds: Sequence[float] | np.ndarray,
    mean_dice: Sequence[float] | np.ndarray,
    run_threshold: float | None = None,
) -> bytes:
    """Mean Dice against the binarisation threshold, best threshold (and the run's) marked."""
    t, d = np.asarray(thresholds, float), np.asarray(mean_dice, float)
    fig = Figure(figsize=(6, 3.6), dpi=DPI)
    ax = fig.subplots()
    ax.plot(t, d, marker="o", markersize=3, color="#4a78b5")
    if d.size and np.isfinite(d).any():
        i = int(np.nanargmax(d))
        ax.axvline(t[i], color="#d62728", linestyle="--", label=f"best {t[i]:.2f} (Dice {d[i]:.3f})")
    if run_threshold is not None:
        ax.axvline(run_threshold, color="#7f7f7f", linestyle=":", label=f"run threshold {run_threshold:.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("threshold (mask = probability > threshold)")
    ax.set_ylabel("mean Dice")
    ax.set_title("Threshold sweep (optimistic: chosen on the reported frames)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def paired_figure(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, labels: Sequence[str]) -> bytes:
    """Per-frame Dice of run A (x) against run B (y); points above the line favour B."""
    xa, xb = np.asarray(a, float), np.asarray(b, float)
    keep = np.isfinite(xa) & np.isfinite(xb)
    fig = Figure(figsize=(4.8, 4.8), dpi=DPI)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#7f7f7f", linewidth=1, label="identity")
    ax.scatter(xa[keep], xb[keep], s=12, alpha=0.7, color="#4a78b5", label=f"frames (n={int(keep.sum())})")
    ax.set_xlim(-0.02, 1.02)  # margins keep points at exactly 0 or 1 visible
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel(f"Dice: {labels[0]}")
    ax.set_ylabel(f"Dice: {labels[1]}")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Paired per-frame Dice", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _overlay(base: np.ndarray, mask: np.ndarray, colour: tuple[float, float, float], alpha: float = 0.55) -> np.ndarray:
    out = base.copy()
    out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(colour, np.float32)
    return out


def _difference(base: np.ndarray, g: np.ndarray, p: np.ndarray) -> np.ndarray:
    out = base * 0.3  # dimmed image keeps anatomy visible behind the colours without competing
    out[g & p] = TP_COLOUR
    out[~g & p] = FP_COLOUR
    out[g & ~p] = FN_COLOUR
    return out


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return x[np.isfinite(x)]


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()
