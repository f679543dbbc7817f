"""Runs and jobs into SQL first, then messages to the broker.

The job row (with the image bytes, content-addressed) is committed before its message is sent, so
a broker that loses messages can be refilled from the database (`sa2va-queue requeue --stale`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterable, Sequence

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import FINAL_STATUSES, DeadLetter, Image, Job, JobStatus, Run
from sa2va_queue.core.exceptions import ConfigError, NotFound, ServiceUnavailable
from sa2va_queue.core.imaging import encode_mask
from sa2va_queue.core.broker import TASK_NAME

SEND_CHUNK = 200


@dataclass
class Registered:
    run: Run
    new_job_ids: list[str]
    skipped_existing: int
    failed_at_validation: int


def get_or_create_run(
    session: Session, *, name: str, model_spec: str, dataset: str, prompt: str, threshold: float, split: str | None
) -> Run:
    run = session.scalar(select(Run).where(Run.name == name))
    if run is None:
        run = Run(name=name, model_spec=model_spec, dataset=dataset, prompt=prompt, threshold=threshold, split=split)
        session.add(run)
        session.flush()
        return run
    if run.model_spec != model_spec:
        raise ConfigError(
            f"run {name!r} exists with model {run.model_spec!r}, not {model_spec!r}; "
            "choose another --run-name to compare models"
        )
    return run


def register_frames(session: Session, blobs: BlobStore, run: Run, frames: Iterable, *, queue: str, prompt: str) -> Registered:
    """Store images, ground truth and one job per frame. Frames already in the run are skipped;
    frames with `error` set become failed jobs with that reason (reported, never lost)."""
    existing = set(session.scalars(select(Job.name).where(Job.run_id == run.id)))
    new_ids: list[str] = []
    skipped = failed = 0
    for frame in frames:
        if frame.name in existing:
            skipped += 1
            continue
        job = Job(id=str(uuid.uuid4()), run_id=run.id, name=frame.name, prompt=prompt, queue=queue,
                  status=JobStatus.pending, attempts=0, gt_source=frame.gt_source)
        if frame.error:
            job.status, job.error, job.finished_at = JobStatus.failed, frame.error, datetime.now(timezone.utc)
            failed += 1
        else:
            job.image_id = _image_id(session, blobs, frame)
            if frame.gt_mask is not None:
                job.gt_sha256 = blobs.put(session, encode_mask(frame.gt_mask), "image/png")
            new_ids.append(job.id)
        session.add(job)
    session.flush()
    return Registered(run=run, new_job_ids=new_ids, skipped_existing=skipped, failed_at_validation=failed)


def send_jobs(
    app: Celery,
    session_factory: Callable[[], Session],
    job_ids: Sequence[str],
    queue: str,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send one message per job (task id = job id) and mark the jobs queued, chunk by chunk."""
    sent = 0
    try:
        with app.producer_or_acquire() as producer:
            for start in range(0, len(job_ids), SEND_CHUNK):
                chunk = list(job_ids[start:start + SEND_CHUNK])
                # Marked before sending: a fast worker may claim a job before this call returns.
                # A send that fails leaves them `queued` but unsent: `requeue --stale` re-sends them.
                with session_factory() as session, session.begin():
                    session.execute(
                        update(Job)
                        .where(Job.id.in_(chunk), Job.status == JobStatus.pending)
                        .values(status=JobStatus.queued, enqueued_at=datetime.now(timezone.utc))
                    )
                for job_id in chunk:
                    app.send_task(TASK_NAME, args=[job_id], task_id=job_id, queue=queue, producer=producer)
                sent += len(chunk)
                if on_sent is not None:
                    on_sent(len(chunk))
    except (KombuOperationalError, ConnectionError, OSError) as exc:
        raise ServiceUnavailable(
            f"broker stopped answering after {sent} of {len(job_ids)} jobs were sent ({exc}); "
            "the rest are safe in the database: run `sa2va-queue requeue --stale` once Redis is back"
        ) from None
    return sent


def resend(app: Celery, session_factory: Callable[[], Session], targets: Sequence[tuple[str, str]]) -> int:
    """Reset and send again (job id, queue) pairs, grouped by queue."""
    if not targets:
        return 0
    with session_factory() as session, session.begin():
        reset_for_requeue(session, [job_id for job_id, _ in targets])
    by_queue: dict[str, list[str]] = {}
    for job_id, queue in targets:
        by_queue.setdefault(queue, []).append(job_id)
    return sum(send_jobs(app, session_factory, ids, queue) for queue, ids in by_queue.items())


def jobs_to_requeue(
    session: Session, *, run_name: str | None, stale_after_s: float | None, failed: bool, dead: bool
) -> list[tuple[str, str]]:
    """(job id, queue) of: jobs not final, untouched for `stale_after_s` (None: skip these);
    failed jobs that have an image (`failed`); jobs in the dead-letter table not yet requeued (`dead`)."""
    conds = []
    if stale_after_s is not None:
        cutoff = _db_time(session, datetime.now(timezone.utc) - timedelta(seconds=stale_after_s))
        stamp = func.coalesce(Job.started_at, Job.enqueued_at, Job.created_at)
        conds.append(Job.status.not_in(FINAL_STATUSES) & (stamp <= cutoff))
    if failed:
        conds.append((Job.status == JobStatus.failed) & Job.image_id.is_not(None))
    if dead:
        pending_dead = select(DeadLetter.job_id).where(DeadLetter.requeued_at.is_(None))
        conds.append(Job.id.in_(pending_dead) & (Job.status == JobStatus.failed))
    if not conds:
        return []
    query = select(Job.id, Job.queue).where(or_(*conds))
    if run_name is not None:
        run = session.scalar(select(Run).where(Run.name == run_name))
        if run is None:
            raise NotFound(f"no run named {run_name!r}")
        query = query.where(Job.run_id == run.id)
    return [(row.id, row.queue) for row in session.execute(query)]


def reset_for_requeue(session: Session, job_ids: Sequence[str]) -> None:
    """Failed jobs start over (attempts reset, dead letters stamped); stale ones keep their history."""
    if not job_ids:
        return
    now = datetime.now(timezone.utc)
    session.execute(
        update(DeadLetter).where(DeadLetter.job_id.in_(job_ids), DeadLetter.requeued_at.is_(None)).values(requeued_at=now)
    )
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == JobStatus.failed)
        .values(status=JobStatus.pending, error=None, attempts=0, finished_at=None)
    )
    session.execute(
        update(Job).where(Job.id.in_(job_ids), Job.status.not_in(FINAL_STATUSES)).values(status=JobStatus.pending)
    )


def _image_id(session: Session, blobs: BlobStore, frame) -> int:
    sha = blobs.put(session, frame.data, frame.media_type or "application/octet-stream")
    image_id = session.scalar(select(Image.id).where(Image.sha256 == sha))
    if image_id is not None:
        return image_id
    image = Image(sha256=sha, width=frame.width, height=frame.height, mode=frame.mode or "?",
                  media_type=frame.media_type or "application/octet-stream")
    session.add(image)
    session.flush()
    return image.id


def _db_time(session: Session, value: datetime) -> datetime:
    # SQLite stores naive UTC; PostgreSQL compares aware timestamps.
    return value.replace(tzinfo=None) if session.bind.dialect.name == "sqlite" else value
