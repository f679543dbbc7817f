"""Load one run and every frame of it (job, image, prediction, metrics) in a handful of queries.

Patient identifiers are PHI: every frame gets `display_name`, its name with the patient id replaced
by a keyed pseudonym (core/pseudonyms.py: the caller passes the deployment's Pseudonymizer), and
free text that may quote a frame name (errors, model answers, the prompt) goes through
`RunData.scrub`, so reports built from a RunData never need the raw `name`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.orm import Session

from sa2va_queue.db.calibrations import MODEL_DEFAULT, calibration_from_source
from sa2va_queue.db.jobstore import find_run, model_versions, run_frames
from sa2va_queue.db.models import JobStatus
from sa2va_queue.core.pseudonyms import Pseudonymizer, parse_name
from sa2va_queue.core.metrics import METRIC_COLUMNS


@dataclass(frozen=True)
class ModelVersionInfo:
    backend: str
    params: dict[str, Any]
    checkpoint_hash: str | None
    code_version: str
    n_predictions: int  # how many frames of this run this version predicted


@dataclass(frozen=True)
class CalibrationInfo:
    """The calibration a run's threshold came from (db/calibrations.py)."""

    id: int
    run_name: str
    threshold: float
    n_frames: int
    dice: float
    image_sha256s: frozenset[str]


@dataclass
class FrameRecord:
    job_id: str
    name: str  # raw: may hold a patient id; never write it into a report
    display_name: str
    status: str
    error: str | None  # already scrubbed of patient ids
    attempts: int
    worker: str | None
    enqueued_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    queue_wait_s: float | None
    end_to_end_s: float | None
    preprocess_ms: float | None
    compute_ms: float | None  # the whole batch's model time (shared by the batch's frames)
    batch_size: int | None
    threshold: float | None  # threshold the prediction was made with
    text: str | None  # model answer, scrubbed
    image_sha256: str | None
    gt_sha256: str | None
    mask_sha256: str | None
    prob_sha256: str | None
    metrics: dict[str, float | bool | None] | None
    dice_sweep: bytes | None = None  # Dice at core.metrics.SWEEP_GRID + the frame's threshold, if stored

    @property
    def dice(self) -> float | None:
        return None if self.metrics is None else self.metrics.get("dice")  # type: ignore[return-value]


@dataclass
class RunData:
    name: str
    model_spec: str
    dataset: str
    split: str | None
    prompt: str
    threshold: float
    threshold_source: str  # "model default" or "calibration <id> (run <name>, ...)"
    calibration: CalibrationInfo | None  # the calibration named by threshold_source, when it exists
    created_at: datetime | None
    model_versions: list[ModelVersionInfo]
    frames: list[FrameRecord]
    _phi: dict[str, str] = field(default_factory=dict, repr=False)  # patient id -> hash, longest first
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    @property
    def model_version(self) -> ModelVersionInfo | None:
        """The version that made most of the predictions (None before any prediction)."""
        return self.model_versions[0] if self.model_versions else None

    def scrub(self, text: str | None) -> str | None:
        """Replace every patient id of this run's frames in `text` by its hash.

        One regex pass, longest id first: an inserted hash is never scanned again, so a short id
        that happens to occur in a hash's hex digits cannot garble it.
        """
        if not text or not self._phi:
            return text
        if self._pattern is None:
            self._pattern = re.compile("|".join(re.escape(raw) for raw in self._phi))
        return self._pattern.sub(lambda m: self._phi[m.group(0)], text)


def load_run(session: Session, run_name: str, *, pseudonymizer: Pseudonymizer,
             split_names: set[str] | None = None) -> RunData:
    """The run and its frames ordered by name; `split_names` keeps only jobs listed there by raw or
    by pseudonymised name (either kind of split file works).

    Raises NotFound (listing the runs that exist) for an unknown run name.
    """
    run = find_run(session, run_name)

    rows = run_frames(session, run.id)
    # Filtered here rather than with IN (...): split files can exceed SQLite's parameter limit.
    if split_names is not None:
        rows = [r for r in rows if r.name in split_names or pseudonymizer.name(r.name) in split_names]

    phi = _phi_map((r.name for r in rows), pseudonymizer)
    data = RunData(
        name=run.name,
        model_spec=run.model_spec,
        dataset=run.dataset,
        split=run.split,
        prompt=run.prompt,
        threshold=run.threshold,
        threshold_source=getattr(run, "threshold_source", None) or MODEL_DEFAULT,
        calibration=_calibration(session, getattr(run, "threshold_source", None)),
        created_at=_utc(run.created_at),
        model_versions=[],
        frames=[],
        _phi=phi,
    )
    data.prompt = data.scrub(run.prompt) or ""
    version_counts: Counter[int] = Counter()
    for row in rows:
        if row.prediction_id is not None:
            version_counts[row.model_version_id] += 1
        data.frames.append(_frame(row, data, pseudonymizer))
    data.model_versions = _versions(session, version_counts)
    return data


def _frame(row: Any, run: RunData, pseudonymizer: Pseudonymizer) -> FrameRecord:
    enq, start, fin = _utc(row.enqueued_at), _utc(row.started_at), _utc(row.finished_at)
    status = row.status
    return FrameRecord(
        job_id=row.id,
        name=row.name,
        display_name=pseudonymizer.name(row.name),
        status=status.value if isinstance(status, JobStatus) else str(status),
        error=run.scrub(row.error),
        attempts=row.attempts,
        worker=row.worker,
        enqueued_at=enq,
        started_at=start,
        finished_at=fin,
        queue_wait_s=_seconds(enq, start),
        end_to_end_s=_seconds(enq, fin),
        preprocess_ms=row.preprocess_ms,
        compute_ms=row.compute_ms,
        batch_size=row.batch_size,
        threshold=row.threshold,
        text=run.scrub(row.text),
        image_sha256=row.image_sha256,
        gt_sha256=row.gt_sha256,
        mask_sha256=row.mask_sha256,
        prob_sha256=row.prob_sha256,
        metrics=None if row.metrics_id is None else {k: getattr(row, f"m_{k}") for k in METRIC_COLUMNS},
        dice_sweep=row.dice_sweep,
    )


def _calibration(session: Session, source: str | None) -> CalibrationInfo | None:
    cal = calibration_from_source(session, source)
    if cal is None:
        return None
    return CalibrationInfo(id=cal.id, run_name=cal.run_name, threshold=cal.threshold, n_frames=cal.n_frames,
                           dice=cal.dice, image_sha256s=frozenset(cal.image_sha256s or ()))


def _versions(session: Session, counts: Counter[int]) -> list[ModelVersionInfo]:
    if not counts:
        return []
    rows = model_versions(session, list(counts))
    infos = [
        ModelVersionInfo(
            backend=mv.backend,
            params=dict(mv.params or {}),
            checkpoint_hash=mv.checkpoint_hash,
            code_version=mv.code_version,
            n_predictions=counts[mv.id],
        )
        for mv in rows
    ]
    return sorted(infos, key=lambda v: -v.n_predictions)


def _phi_map(names: Any, pseudonymizer: Pseudonymizer) -> dict[str, str]:
    """Patient ids -> their pseudonyms, longest first (an id that contains another is replaced first).

    Pseudonymizer.name makes the same replacement, so names quoted in text come out as display names.
    """
    mapping: dict[str, str] = {}
    for name in names:
        patient = parse_name(name).patient
        if patient:
            mapping[patient] = pseudonymizer.pseudonym(patient)
    return dict(sorted(mapping.items(), key=lambda kv: -len(kv[0])))


def _utc(dt: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes for timezone-aware columns; they were written as UTC."""
    if dt is None:
        return None
    return dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt


def _seconds(a: datetime | None, b: datetime | None) -> float | None:
    return (b - a).total_seconds() if a is not None and b is not None else None
