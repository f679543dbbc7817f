"""Report figures as PNG bytes.

Built on matplotlib's object API with the Agg canvas (no pyplot): no global figure state, no
display needed, safe in worker threads. Small dpi keeps a self-contained HTML report a few MB.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

DPI = 80
# Difference-map colours (RGB in [0, 1]); chosen to stay distinguishable for red-green deficiency.
TP_COLOUR = (0.10, 0.80, 0.25)
FP_COLOUR = (1.00, 0.20, 0.85)
FN_COLOUR = (0.15, 0.55, 1.00)
GT_OVERLAY = (0.15, 0.55, 1.00)
PRED_OVERLAY = (1.00, 0.60, 0.05)


def case_figure(image_rgb: np.ndarray, gt: np.ndarray, pred: np.ndarray, title: str) -> bytes:
    """Six panels: image | ground truth | prediction / GT overlay | prediction overlay | difference."""
    image = np.asarray(image_rgb)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    g, p = np.asarray(gt, bool), np.asarray(pred, bool)
    if not (image.shape[:2] == g.shape == p.shape):
        raise ValueError(f"image {image.shape[:2]}, ground truth {g.shape} and prediction {p.shape} differ in size")
    base = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else np.clip(image.astype(np.float32), 0, 1)

    fig = Figure(figsize=(10.5, 7.4), dpi=DPI)
    axes = fig.subplots(2, 3)
    panels = [
        ("image", base),
        ("ground truth", g),
        ("prediction", p),
        ("ground truth overlay", _overlay(base, g, GT_OVERLAY)),
        ("prediction overlay", _overlay(base, p, PRED_OVERLAY)),
        ("difference", _difference(base, g, p)),
    ]
    for ax, (label, arr) in zip(axes.ravel(), panels):
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=1, interpolation="antialiased")
        ax.set_title(label, fontsize=10)
        ax.set_axis_off()
    tp, fp, fn = int((g & p).sum()), int((~g & p).sum()), int((g & ~p).sum())
    axes[1, 2].legend(
        handles=[
            Patch(color=TP_COLOUR, label=f"TP ({tp} px)"),
            Patch(color=FP_COLOUR, label=f"FP ({fp} px)"),
            Patch(color=FN_COLOUR, label=f"FN ({fn} px)"),
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.02),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return _png(fig)


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
    out = base * 0.35  # dimmed image keeps anatomy visible behind the error colours
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
