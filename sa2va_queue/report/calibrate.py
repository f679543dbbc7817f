"""Calibration as a step of its own: choose a model version's threshold on validation frames.

`sa2va-queue calibrate RUN --split val.txt` sweeps thresholds over the run's stored probability maps
and ground truth (only the frames in the split file, when given), takes the threshold with the best
mean Dice and records it for the run's model version (db/calibrations.py). Later runs of that model
version use it, and their reports name it as the threshold's source; a comparison warns when the
frames it was chosen on overlap the compared ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from sa2va_queue.core.exceptions import NotFound
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.calibrations import record_calibration
from sa2va_queue.db.models import Calibration
from sa2va_queue.report.collect import load_run
from sa2va_queue.report.summarize import threshold_sweep

GRID = np.round(np.arange(0.02, 0.99, 0.01), 2)  # 0.02 ... 0.98: steps finer than run-to-run noise


@dataclass(frozen=True)
class CalibrationResult:
    calibration: Calibration
    run_threshold: float  # the threshold the run's own predictions used
    dice_at_run_threshold: float
    warnings: list[str]


def calibrate_run(session: Session, blobs: BlobStore, run_name: str, *, pseudonymizer: Pseudonymizer,
                  split_names: set[str] | None = None) -> CalibrationResult:
    """Sweep, pick the best mean-Dice threshold, record it (flushed; the caller commits)."""
    run = load_run(session, run_name, pseudonymizer=pseudonymizer, split_names=split_names)
    sweep, skipped = threshold_sweep(session, blobs, run, GRID)
    if sweep is None:
        where = f" among the {len(run.frames)} frames of the split" if split_names is not None else ""
        raise NotFound(f"run {run_name!r} has no frame with both a stored probability map and ground truth{where}; "
                       "calibrate needs ground truth and SA2VA_STORE_PROBABILITIES=true when the run was made")
    # frames that entered the sweep (skipped ones included: a wider set only makes overlap checks stricter)
    images = [f.image_sha256 for f in run.frames if f.prob_sha256 and f.gt_sha256 and f.image_sha256]
    cal = record_calibration(session, model_key=ModelSpec.parse(run.model_spec).key,
                             threshold=sweep["best_threshold"], run_name=run.name, dice=sweep["best_mean_dice"],
                             image_sha256s=images)
    warnings = list(skipped)
    if split_names is None:
        warnings.append("no --split given: calibrated on every frame of the run; report other frames against it")
    return CalibrationResult(cal, sweep["run_threshold"], sweep["mean_dice_at_run_threshold"], warnings)
