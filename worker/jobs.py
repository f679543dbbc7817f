"""One job's life in SQL: claim, load inputs, store the prediction, then the metrics, then finish.

Every write is idempotent, so a job delivered twice (worker killed after the write, before the ack)
ends with exactly one prediction and one metrics row. The ground truth is read only in
`store_metrics`, after the prediction is stored, and only ever compared with the stored mask.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import sa2va_queue
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import FINAL_STATUSES, DeadLetter, Image, Job, JobStatus, Metrics, ModelVersion, Prediction
from sa2va_queue.core.exceptions import GroundTruthMismatch, NotFound
from sa2va_queue.core.imaging import decode_mask, encode_mask, encode_probability, image_size
from sa2va_queue.core.metrics import compute_metrics
from sa2va_queue.worker.backends.base import SegmentationResult, VersionInfo


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    name: str
    prompt: str
    image_sha256: str
    width: int
    height: int
    attempts: int
    has_ground_truth: bool
    enqueued_at: datetime | None
    started_at: datetime | None


def now() -> datetime:
    return datetime.now(timezone.utc)


def claim(session: Session, job_id: str, worker: str) -> ClaimedJob | None:
    """Mark the job running (attempts + 1). None when it already reached a final state."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINAL_STATUSES))
        .values(status=JobStatus.running, attempts=Job.attempts + 1, started_at=now(), worker=worker)
    )
    if result.rowcount == 0:
        if session.get(Job, job_id) is None:
            raise NotFound(f"job {job_id} is not in the database (was it enqueued to another database?)")
        return None
    job = session.get(Job, job_id)
    assert job is not None
    if job.image_id is None:
        raise NotFound(f"job {job_id} ({job.name}) has no image stored; re-enqueue the file")
    image = session.get(Image, job.image_id)
    assert image is not None
    return ClaimedJob(
        id=job.id,
        name=job.name,
        prompt=job.prompt,
        image_sha256=image.sha256,
        width=image.width,
        height=image.height,
        attempts=job.attempts,
        has_ground_truth=job.gt_sha256 is not None,
        enqueued_at=job.enqueued_at,
        started_at=job.started_at,
    )


def check_ground_truth_size(session: Session, blobs: BlobStore, job_id: str) -> None:
    """Fail early (before any model time) when the stored ground truth does not fit the image."""
    job = session.get(Job, job_id)
    if job is None or job.gt_sha256 is None or job.image is None:
        return
    # header only: the pixels are decoded once, later, when the metrics are computed
    width, height = image_size(blobs.get(session, job.gt_sha256), job.gt_source or "ground truth")
    if (width, height) != (job.image.width, job.image.height):
        raise GroundTruthMismatch(
            f"{job.gt_source or 'ground truth'}: mask is {width}x{height} but image {job.name} is "
            f"{job.image.width}x{job.image.height}; give a mask of the image's size"
        )


def model_version_id(session: Session, info: VersionInfo) -> int:
    """The id of this model version's row, created on first use (safe under concurrent workers)."""
    fields = {
        "backend": info.backend,
        "params": info.params,
        "checkpoint_hash": info.checkpoint_hash,
        "code_version": code_version(),
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
    existing = session.scalar(select(ModelVersion.id).where(ModelVersion.key == key))
    if existing is not None:
        return existing
    try:
        with session.begin_nested():
            row = ModelVersion(key=key, **fields)
            session.add(row)
        return row.id
    except IntegrityError:
        return session.scalar(select(ModelVersion.id).where(ModelVersion.key == key))


def store_prediction(
    session: Session,
    blobs: BlobStore,
    job_id: str,
    result: SegmentationResult,
    *,
    version_id: int,
    threshold: float,
    batch_size: int,
    preprocess_ms: float,
    compute_ms: float,
    store_probability: bool,
) -> Prediction:
    existing = session.scalar(select(Prediction).where(Prediction.job_id == job_id))
    if existing is not None:  # redelivered after the write: keep the first result
        return existing
    mask_sha = blobs.put(session, encode_mask(result.mask), "image/png")
    prob_sha = blobs.put(session, encode_probability(result.probability), "image/png") if store_probability else None
    prediction = Prediction(
        job_id=job_id,
        model_version_id=version_id,
        mask_sha256=mask_sha,
        prob_sha256=prob_sha,
        text=result.text,
        threshold=threshold,
        batch_size=batch_size,
        preprocess_ms=preprocess_ms,
        compute_ms=compute_ms,
    )
    try:
        with session.begin_nested():
            session.add(prediction)
    except IntegrityError:
        return session.scalars(select(Prediction).where(Prediction.job_id == job_id)).one()
    return prediction


def store_metrics(session: Session, blobs: BlobStore, job_id: str) -> Metrics | None:
    """Metrics from the *stored* prediction and the ground truth; None when there is no ground truth."""
    job = session.get(Job, job_id)
    if job is None or job.gt_sha256 is None:
        return None
    prediction = session.scalars(select(Prediction).where(Prediction.job_id == job_id)).one()
    existing = session.scalar(select(Metrics).where(Metrics.job_id == job_id))
    if existing is not None:
        return existing
    predicted = decode_mask(blobs.get(session, prediction.mask_sha256), f"prediction of {job.name}")
    truth = decode_mask(blobs.get(session, job.gt_sha256), job.gt_source or "ground truth", shape=predicted.shape)
    row = Metrics(job_id=job_id, prediction_id=prediction.id, **compute_metrics(predicted, truth))
    try:
        with session.begin_nested():
            session.add(row)
    except IntegrityError:
        return session.scalars(select(Metrics).where(Metrics.job_id == job_id)).one()
    return row


def finish(session: Session, job_id: str, status: JobStatus, error: str | None = None) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINAL_STATUSES))
        .values(status=status, error=error, finished_at=now())
    )


def dead_letter(session: Session, job_id: str, error: str) -> None:
    """The job used up its attempts: failed, with a dead-letter row until someone requeues it."""
    job = session.get(Job, job_id)
    if job is None:
        return
    finish(session, job_id, JobStatus.failed, error)
    session.add(DeadLetter(job_id=job_id, error=error, attempts=job.attempts))


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (recorded per model version)."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{sa2va_queue.__version__}+{commit}" if commit else sa2va_queue.__version__
