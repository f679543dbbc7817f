"""Threshold calibrations: record one, find the latest for a model version, name a threshold's source.

A run's threshold comes either from its model spec (the backend's default or `?threshold=`) or from
the latest calibration of that model version (ModelSpec.key), recorded by `sa2va-queue calibrate`.
`source_text` is what a run stores as its threshold source; `calibration_from_source` reads it back
so the report can say which frames the threshold was chosen on.
"""

from __future__ import annotations

import re
from typing import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from sa2va_queue.db.models import Calibration

MODEL_DEFAULT = "model default"
_SOURCE = re.compile(r"^calibration (\d+)\b")


def latest_calibration(session: Session, model_key: str) -> Calibration | None:
    """The most recent calibration of this model version, or None."""
    return session.scalars(
        select(Calibration).where(Calibration.model_key == model_key)
        .order_by(Calibration.created_at.desc(), Calibration.id.desc()).limit(1)
    ).first()


def record_calibration(session: Session, *, model_key: str, threshold: float, run_name: str, dice: float,
                       image_sha256s: Iterable[str]) -> Calibration:
    """Add a calibration (flushed, not committed: the caller's transaction decides)."""
    images = sorted(set(image_sha256s))
    cal = Calibration(model_key=model_key, threshold=float(threshold), run_name=run_name, n_frames=len(images),
                      dice=float(dice), image_sha256s=images)
    session.add(cal)
    session.flush()
    return cal


def source_text(cal: Calibration | None) -> str:
    """`calibration <id> (run <name>, <n> frames, Dice <d>)` or `model default`."""
    if cal is None:
        return MODEL_DEFAULT
    return f"calibration {cal.id} (run {cal.run_name}, {cal.n_frames} frames, Dice {cal.dice:.3f})"


def calibration_from_source(session: Session, source: str | None) -> Calibration | None:
    """The calibration a stored threshold source names, or None (model default, unknown, deleted)."""
    match = _SOURCE.match(source or "")
    return session.get(Calibration, int(match.group(1))) if match else None
