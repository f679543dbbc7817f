"""The numbers of a run report, as plain JSON-ready dicts (render.py turns them into files).

Everything here works from a collect.RunData, so the Markdown, HTML and JSON outputs and the
CLI's end-of-run table all show the same numbers. Only display names leave this module.
`build_report` is re-exported from render.py so the CLI imports everything from here.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from rich.markup import escape
from rich.table import Table
from sqlalchemy.orm import Session

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import FINAL_STATUSES, JobStatus
from sa2va_queue.core.exceptions import Sa2vaQueueError
from sa2va_queue.core.imaging import decode_mask, decode_probability
from sa2va_queue.core.names import printable
from sa2va_queue.core.metrics import LEAK_DICE, METRIC_NAMES, SWEEP_GRID, dice_at_thresholds, leak_suspected
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.report.collect import FrameRecord, RunData, load_run
from sa2va_queue.report.drawing import FigurePool
from sa2va_queue.report.stats import describe, paired_comparison, percentiles

SWEEP_NOTE = (
    "The best threshold is chosen on the same frames it is reported on, so its mean Dice is "
    "optimistic; choose the threshold on a separate validation split before quoting it."
)
LEAK_NOTE = "this usually means the ground truth leaked into the prediction"
_FINAL = {s.value for s in FINAL_STATUSES}


def summarize_run(run: RunData) -> dict[str, Any]:
    """Header, status counts, failure reasons, metric summaries, latency, integrity, frame table."""
    report = {
        "run": _header(run),
        "counts": _counts(run.frames),
        "failures": _failures(run.frames),
        "metrics": {m: describe([_metric(f, m) for f in run.frames if f.metrics is not None]) for m in METRIC_NAMES},
        "latency": _latency(run.frames),
        "suspicious": _integrity(run),
        "frames": [_frame_row(f) for f in sorted(run.frames, key=lambda f: f.display_name)],
    }
    report["warnings"] = []
    if len(run.model_versions) > 1:
        report["warnings"].append(
            f"{len(run.model_versions)} different model versions made this run's predictions; "
            "the header shows the most frequent one"
        )
    return report


def select_cases(run: RunData) -> list[tuple[str, FrameRecord]]:
    """Worst, median and best frames by Dice (ties broken by display name), each frame once."""
    ranked = sorted(
        (f for f in run.frames if f.dice is not None and f.image_sha256 and f.gt_sha256 and f.mask_sha256),
        key=lambda f: (f.dice, f.display_name),
    )
    if not ranked:
        return []
    picks = [("worst", ranked[0]), ("median", ranked[(len(ranked) - 1) // 2]), ("best", ranked[-1])]
    seen: set[str] = set()
    out = []
    for label, frame in picks:
        if frame.job_id not in seen:
            seen.add(frame.job_id)
            out.append((label, frame))
    return out


def threshold_sweep(
    session: Session, blobs: BlobStore, run: RunData, thresholds: Sequence[float] | np.ndarray
) -> tuple[dict[str, Any] | None, list[str]]:
    """Mean Dice over frames with a stored probability map and ground truth, per threshold.

    Returns (sweep or None when no frame qualifies, warnings about frames that had to be skipped).
    """
    frames = [f for f in run.frames if f.prob_sha256 and f.gt_sha256]
    if not frames or len(thresholds) == 0:
        return None, []
    used = Counter(f.threshold for f in frames if f.threshold is not None)
    run_t = float(used.most_common(1)[0][0]) if used else float(run.threshold)
    grid = np.append(np.asarray(thresholds, float), run_t)
    stored, skipped = _stored_sweeps(frames, grid[:-1], run_t), []
    rows: list[np.ndarray] = stored or []
    for f in frames if stored is None else ():  # runs from before 0006, or a custom grid: decode the maps
        try:
            prob = decode_probability(blobs.get(session, f.prob_sha256))  # type: ignore[arg-type]
            gt = decode_mask(blobs.get(session, f.gt_sha256), f.display_name, prob.shape)  # type: ignore[arg-type]
            rows.append(dice_at_thresholds(prob, gt, grid))
        except (Sa2vaQueueError, ValueError) as exc:
            skipped.append(f"threshold sweep skipped {f.display_name}: {run.scrub(str(exc))}")
    if not rows:
        return None, skipped
    mean = np.mean(np.vstack(rows), axis=0)
    best = int(np.argmax(mean[:-1]))
    return {
        "n_frames": len(rows),
        "n_skipped": len(skipped),
        "thresholds": [float(t) for t in grid[:-1]],
        "mean_dice": [float(d) for d in mean[:-1]],
        "best_threshold": float(grid[best]),
        "best_mean_dice": float(mean[best]),
        "run_threshold": run_t,
        "mean_dice_at_run_threshold": float(mean[-1]),
        "note": SWEEP_NOTE,
    }, skipped


def _stored_sweeps(frames: list[FrameRecord], thresholds: np.ndarray, run_t: float) -> list[np.ndarray] | None:
    """Each frame's Dice at `thresholds` and `run_t` from the sweeps the worker stored, or None when
    a frame has none, used another threshold, or a threshold is off SWEEP_GRID. The worker computed
    them from the map as stored, so they equal what decoding the maps gives, bit for bit."""
    grid32 = SWEEP_GRID.astype(np.float32)  # the comparison happens in float32, as in dice_at_thresholds
    cols = [np.flatnonzero(grid32 == np.float32(t)) for t in thresholds]
    if any(c.size != 1 for c in cols):
        return None
    pick = np.append(np.concatenate(cols), SWEEP_GRID.size)  # the last stored value: at the frame's threshold
    rows = []
    for f in frames:
        if f.dice_sweep is None or f.threshold != run_t or len(f.dice_sweep) != 8 * (SWEEP_GRID.size + 1):
            return None
        rows.append(np.frombuffer(f.dice_sweep, "<f8")[pick])
    return rows


def compare_runs(run: RunData, other: RunData) -> dict[str, Any]:
    """Paired Dice / IoU of `run` (a) against `other` (b) on the frames both runs share, by name."""
    mine = {f.name: f for f in run.frames}
    theirs = {f.name: f for f in other.frames}
    shared = sorted(set(mine) & set(theirs), key=lambda n: mine[n].display_name)
    result: dict[str, Any] = {
        "other_run": other.name,
        "other_model_spec": other.model_spec,
        "n_shared": len(shared),
        "n_only_this_run": len(mine) - len(shared),
        "n_only_other_run": len(theirs) - len(shared),
    }
    for metric in ("dice", "iou"):
        a = [_metric(mine[n], metric) for n in shared]
        b = [_metric(theirs[n], metric) for n in shared]
        result[metric] = paired_comparison(a, b)
    result["per_frame"] = [
        {"display_name": mine[n].display_name, "dice_a": _metric(mine[n], "dice"), "dice_b": _metric(theirs[n], "dice")}
        for n in shared
    ]
    compared = {mine[n].image_sha256 for n in shared if mine[n].image_sha256}
    result["threshold_warnings"] = [w for side in (run, other) if (w := _threshold_fairness(side, compared))]
    return result


def _threshold_fairness(run: RunData, compared: set[str]) -> str | None:
    """Why this side's threshold may favour it on the compared frames, or None when it is held out."""
    cal = run.calibration
    if cal is None:
        return (f"run {run.name} ({run.model_spec}) uses threshold {run.threshold:.3f} from {run.threshold_source}, "
                "not calibrated on held-out frames: a threshold that suits one method can cripple the other. "
                "Calibrate each model on validation frames first (sa2va-queue calibrate RUN --split val.txt)")
    overlap = len(cal.image_sha256s & compared)
    if overlap:
        return (f"run {run.name}'s threshold {run.threshold:.3f} was calibrated on run {cal.run_name} using "
                f"{overlap} of the {len(compared)} compared frames: its scores on them are optimistic; "
                "calibrate on frames outside the comparison")
    return None


def summary_table(session: Session, run_name: str, *, pseudonymizer: Pseudonymizer) -> Table:
    """Status counts and per-metric mean [95% CI] of a run, for the CLI to print."""
    run = load_run(session, run_name, pseudonymizer=pseudonymizer)
    counts = _counts(run.frames)
    table = Table(title=f"Run {printable(run.name)}: {counts['total']} frames", title_justify="left")
    table.add_column("", style="bold")
    table.add_column("value", justify="right")
    table.add_column("detail")
    for status, n in counts["by_status"].items():
        if n or status in _FINAL:
            table.add_row(status, str(n), "")
    table.add_section()
    for name in METRIC_NAMES:
        d = describe([_metric(f, name) for f in run.frames if f.metrics is not None])
        if d["n"] == 0 and d["n_undefined"] == 0:
            continue
        detail = f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}] n={d['n']}"
        detail += f", undefined={d['n_undefined']}" if d["n_undefined"] else ""
        table.add_row(name, fmt(d["mean"]), escape(detail))
    if not any(f.metrics for f in run.frames):
        table.add_row("metrics", "n/a", "no frame has ground truth and a prediction")
    flagged = _integrity(run)
    if flagged["run"] or flagged["frames"]:
        table.add_section()
        table.add_row("[red]SUSPICIOUS[/red]", str(len(flagged["frames"])), printable("; ".join(flagged["reasons"])))
    return table


def build_report(
    session: Session,
    blobs: BlobStore,
    run_name: str,
    *,
    pseudonymizer: Pseudonymizer,
    out_dir: Path,
    formats: Sequence[str] = ("md", "html", "json"),
    compare: str | None = None,
    split_names: set[str] | None = None,
    sweep_thresholds: int = 19,
    figure_pool: FigurePool | None = None,
) -> dict[str, Path]:
    """Write the run report files; see sa2va_queue.report.render.build_report (re-exported here for the CLI)."""
    from sa2va_queue.report import render  # deferred: render imports this module

    return render.build_report(
        session, blobs, run_name, pseudonymizer=pseudonymizer, out_dir=out_dir, formats=formats, compare=compare,
        split_names=split_names, sweep_thresholds=sweep_thresholds, figure_pool=figure_pool,
    )


def fmt(x: Any, digits: int = 4) -> str:
    """A number for tables: n/a for None / NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, bool) or isinstance(x, int):
        return str(x)
    return f"{x:.{digits}f}"


# -- pieces -------------------------------------------------------------------------------------


def _header(run: RunData) -> dict[str, Any]:
    mv = run.model_version
    return {
        "name": run.name,
        "model_spec": run.model_spec,
        "model_version": None if mv is None else {
            "backend": mv.backend,
            "params": mv.params,
            "checkpoint_hash": mv.checkpoint_hash,
            "code_version": mv.code_version,
        },
        "n_model_versions": len(run.model_versions),
        "prompt": run.prompt,
        "threshold": run.threshold,
        "threshold_source": run.threshold_source,
        "calibration": None if run.calibration is None else {
            "id": run.calibration.id, "run_name": run.calibration.run_name, "threshold": run.calibration.threshold,
            "n_frames": run.calibration.n_frames, "dice": run.calibration.dice},
        "created_at": run.created_at.isoformat() if run.created_at else None,
        "first_enqueued_at": _iso(min((f.enqueued_at for f in run.frames if f.enqueued_at), default=None)),
        "last_finished_at": _iso(max((f.finished_at for f in run.frames if f.finished_at), default=None)),
        "n_frames": len(run.frames),
    }


def _counts(frames: list[FrameRecord]) -> dict[str, Any]:
    by = Counter(f.status for f in frames)
    by_status = {s.value: by.get(s.value, 0) for s in JobStatus}
    by_status.update({k: v for k, v in by.items() if k not in by_status})
    return {
        "total": len(frames),
        "by_status": by_status,
        "unfinished": sum(v for k, v in by_status.items() if k not in _FINAL),
        "with_ground_truth": sum(bool(f.gt_sha256) for f in frames),
        "with_metrics": sum(f.metrics is not None for f in frames),
    }


def _failures(frames: list[FrameRecord]) -> list[dict[str, Any]]:
    """Failed frames grouped by reason (the error with the frame's own name taken out)."""
    groups: dict[str, list[str]] = defaultdict(list)
    for f in frames:
        if f.status == JobStatus.failed.value:
            groups[_reason(f)].append(f.display_name)
    return [
        {"reason": reason, "count": len(names), "examples": sorted(names)[:3]}
        for reason, names in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    ]


def _reason(f: FrameRecord) -> str:
    if not f.error:
        return "(no error recorded)"
    text = f.error.strip().splitlines()[0]
    for variant in sorted({f.display_name, f.display_name.rsplit("/", 1)[-1]}, key=len, reverse=True):
        text = text.replace(variant, "<frame>")
    text = re.sub(r"^(\S*<frame>\S*):\s*", "", text)  # "path/<frame>: cannot decode" -> "cannot decode"
    return text[:200]


def _latency(frames: list[FrameRecord]) -> dict[str, Any]:
    # compute_ms is the whole batch's time, repeated on each of its frames: one value per batch.
    batches = {(f.worker, f.batch_size, f.compute_ms) for f in frames if f.compute_ms is not None}
    finished = [f for f in frames if f.status in _FINAL and f.finished_at is not None]
    starts = [f.enqueued_at for f in frames if f.enqueued_at is not None]
    span = None
    if finished and starts:
        span = (max(f.finished_at for f in finished) - min(starts)).total_seconds()  # type: ignore[type-var,operator]
    return {
        "queue_wait_s": percentiles([f.queue_wait_s for f in frames]),
        "end_to_end_s": percentiles([f.end_to_end_s for f in finished]),
        "compute_batch_ms": percentiles([b[2] for b in batches]),
        "compute_per_frame_ms": percentiles(
            [f.compute_ms / f.batch_size for f in frames if f.compute_ms is not None and f.batch_size]
        ),
        "preprocess_ms": percentiles([f.preprocess_ms for f in frames]),
        "mean_batch_size": float(np.mean([b[1] for b in batches if b[1]])) if batches else None,
        "n_finished": len(finished),
        "span_s": span,
        "throughput_jobs_per_s": len(finished) / span if span and span > 0 else None,
    }


def _integrity(run: RunData) -> dict[str, Any]:
    """Leak guard: frames scored at Dice >= LEAK_DICE (exact copies included), their share of the
    scored frames, and a run flag for a high mean or a partial leak (see LEAK_FRACTION)."""
    scored = [(f, _metric(f, "dice")) for f in run.frames if f.metrics is not None]
    scored = [(f, d) for f, d in scored if d is not None and math.isfinite(d)]
    near = [f for f, d in scored if d >= LEAK_DICE]
    near_ids = {f.job_id for f in near}
    exact = [f for f in run.frames if f.metrics is not None and f.metrics.get("exact_match")]
    same_blob = [f for f in run.frames if f.mask_sha256 and f.mask_sha256 == f.gt_sha256]
    flagged = sorted({f.display_name for f in near + exact + same_blob})
    fraction = len(near) / len(scored) if scored else 0.0
    rest = [d for f, d in scored if f.job_id not in near_ids]
    rest_mean = float(np.mean(rest)) if rest else None
    reasons = []
    if near:
        n_exact = sum(1 for f in near if (f.metrics or {}).get("exact_match"))
        n_empty = sum(1 for f in exact if not (f.metrics or {}).get("true_fraction"))
        reasons.append(
            f"{len(near)} of {len(scored)} frame(s) ({fraction:.0%}) reach Dice >= {LEAK_DICE}"
            + (f", {n_exact} identical to the ground truth pixel for pixel" if n_exact else "")
            + f"; {LEAK_NOTE}"
            + (f" ({n_empty} have an empty ground truth and an empty prediction)" if n_empty else "")
        )
    if same_blob:
        reasons.append(f"{len(same_blob)} frame(s) store the ground-truth file itself as the prediction; {LEAK_NOTE}")
    mean_flag, partial_flag = leak_suspected(len(scored), len(near), float(np.mean([d for _, d in scored]))
                                             if scored else None, rest_mean)
    if mean_flag:
        mean = float(np.mean([d for _, d in scored]))
        reasons.append(f"mean Dice {mean:.4f} > {LEAK_DICE} over {len(scored)} frames; {LEAK_NOTE}")
    elif partial_flag:
        reasons.append(f"partial leak: {fraction:.0%} of frames are near-perfect while the other {len(rest)} "
                       f"average Dice {rest_mean:.3f}; {LEAK_NOTE} for some frames")
    return {"frames": flagged, "run": mean_flag or partial_flag, "reasons": reasons,
            "near_perfect_fraction": fraction, "n_near_perfect": len(near), "n_scored": len(scored),
            "mean_dice_of_rest": rest_mean}


def _frame_row(f: FrameRecord) -> dict[str, Any]:
    m = f.metrics or {}
    row: dict[str, Any] = {"job_id": f.job_id, "display_name": f.display_name, "status": f.status}
    row.update({k: m.get(k) for k in METRIC_NAMES})
    row.update(
        exact_match=m.get("exact_match"),
        error=f.error,
        attempts=f.attempts,
        worker=f.worker,
        queue_wait_s=f.queue_wait_s,
        end_to_end_s=f.end_to_end_s,
        compute_ms=f.compute_ms,
        batch_size=f.batch_size,
    )
    return row


def _metric(f: FrameRecord, name: str) -> float | None:
    v = None if f.metrics is None else f.metrics.get(name)
    return None if v is None else float(v)


def _iso(dt: Any) -> str | None:
    return dt.isoformat() if dt is not None else None
