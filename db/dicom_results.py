"""DICOM results (SEGs) of PACS runs and their delivery state: the only writer of `dicom_results`.

    built ──► kept (no destination)
      └─────► pending ──C-STORE ok──► sent
                 │ ▲
       C-STORE failed: attempts += 1, next_attempt_at = now + backoff (capped), status failed
                 └─┘  (retried until sent: a failed send is never forgotten, `pacs status` lists it)

One row per SEG: the run, the source instance (file key and SOP Instance UID), the SEG's UIDs, its
bytes (a blob), the jobs whose masks it holds (`frames`: source frame number -> job id), the model
version, and the destination it goes to (NULL: kept, not sent).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import Blob, DicomResult, utcnow

SENT, PENDING, FAILED, KEPT = "sent", "pending", "failed", "kept"  # kept: no --send-to, stored only


@dataclass(frozen=True)
class SendSummary:
    by_status: dict[str, int]
    failing: list[tuple[str, int, str | None]]  # (SEG SOP UID, attempts, last error) of unsent failures


def recorded_sources(session: Session, run_id: int) -> set[str]:
    return set(session.scalars(select(DicomResult.source_key).where(DicomResult.run_id == run_id)))


def record(session: Session, blobs: BlobStore, *, run_id: int, source_key: str, source_sop_uid: str, study_uid: str,
           seg_sop_uid: str, seg_series_uid: str, seg: bytes, model_version_id: int | None,
           frames: dict[int, str], destination: str | None) -> DicomResult:
    """Store a SEG and its row (idempotent on the SEG's SOP Instance UID)."""
    existing = session.scalar(select(DicomResult).where(DicomResult.seg_sop_uid == seg_sop_uid))
    if existing is not None:
        return existing
    digest = hashlib.sha256(seg).hexdigest()
    if session.get(Blob, digest) is None:  # through the blob store: the shared blob dir when configured
        session.add_all(Blob(**row) for row in blobs.rows([(seg, "application/dicom")]))
        session.flush()  # no ORM relationship orders this insert before the row that references it
    row = DicomResult(run_id=run_id, source_key=source_key, source_sop_uid=source_sop_uid, study_uid=study_uid,
                      seg_sop_uid=seg_sop_uid, seg_series_uid=seg_series_uid, seg_sha256=digest,
                      model_version_id=model_version_id, frames={str(k): v for k, v in sorted(frames.items())},
                      destination=destination, status=PENDING if destination else KEPT, attempts=0,
                      next_attempt_at=utcnow() if destination else None)
    session.add(row)
    session.flush()
    return row


def due(session: Session, now: datetime, limit: int = 20) -> list[DicomResult]:
    """Unsent results whose next attempt is due, oldest first."""
    return list(session.scalars(
        select(DicomResult).where(DicomResult.status.in_((PENDING, FAILED)), DicomResult.next_attempt_at <= now)
        .order_by(DicomResult.next_attempt_at, DicomResult.id).limit(limit)))


def mark_sent(session: Session, row: DicomResult, now: datetime) -> None:
    row.status, row.sent_at, row.next_attempt_at, row.last_error = SENT, now, None, None
    row.attempts += 1


def mark_failed(session: Session, row: DicomResult, error: str, now: datetime, *, base_s: float = 5.0,
                max_s: float = 300.0) -> None:
    """Count the attempt and schedule the next one: base * 2^(attempts-1), at most `max_s`."""
    row.attempts += 1
    row.status, row.last_error = FAILED, error[:2000]
    row.next_attempt_at = now + timedelta(seconds=min(max_s, base_s * 2 ** (row.attempts - 1)))


def summary(session: Session, limit: int = 10) -> SendSummary:
    counts = dict(session.execute(select(DicomResult.status, func.count()).group_by(DicomResult.status)).all())
    failing = session.execute(
        select(DicomResult.seg_sop_uid, DicomResult.attempts, DicomResult.last_error)
        .where(DicomResult.status == FAILED).order_by(DicomResult.id).limit(limit)).all()
    return SendSummary({str(k): int(v) for k, v in counts.items()}, [tuple(r) for r in failing])


def aware(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes; they are UTC."""
    return value.replace(tzinfo=timezone.utc) if value is not None and value.tzinfo is None else value
