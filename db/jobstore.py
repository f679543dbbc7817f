"""The job store: every state change a job can make, each one statement per batch, in one place.

    register ──► pending ──mark_sent──► queued ──claim──► running ──complete──► done | no_segmentation
                    │                                      │  └──fail───────► failed
                    └─(frame invalid at scan)─► failed      └──(attempts used up)──► failed + dead letter
    requeue / janitor: stale, lost or orphaned jobs ──reset──► pending, then sent again

The producer (register, mark_sent), the worker (claim, complete, fail), the janitor and `requeue`
(stale, orphaned, reset), `run` and `status` (counts) ask this class; no other module writes job SQL.

Statements are written per batch: a claim is one UPDATE ... RETURNING and one SELECT for any number
of jobs; a completion is one INSERT each for blobs, predictions and metrics plus one executemany
UPDATE. Inserts are idempotent on both databases (ON CONFLICT DO NOTHING on the unique keys), so a
job delivered twice — worker killed after the commit, before the ack — writes nothing twice.

Definitions kept here and nowhere else:
- attempts: incremented by each claim, the only attempts counter (Celery retries are not counted);
- stale: not final, and the newest of started/enqueued/created is older than the cutoff;
- orphaned: running on a worker whose liveness key has expired (see worker/heartbeat.py).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Sequence

from sqlalchemy import Connection, Engine, Row, Table, bindparam, case, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sa2va_queue.core.exceptions import ConfigError, NotFound
from sa2va_queue.core.metrics import METRIC_COLUMNS
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.models import (
    FINAL_STATUSES,
    Base,
    Blob,
    DeadLetter,
    Image,
    Job,
    JobStatus,
    Metrics,
    ModelVersion,
    Prediction,
    Run,
)
from sa2va_queue.db.session import get_engine

_FINAL = [s.value for s in FINAL_STATUSES]
_jobs: Table = Job.__table__  # type: ignore[assignment]
_runs: Table = Run.__table__  # type: ignore[assignment]
_blobs: Table = Blob.__table__  # type: ignore[assignment]
_images: Table = Image.__table__  # type: ignore[assignment]
_preds: Table = Prediction.__table__  # type: ignore[assignment]
_metrics: Table = Metrics.__table__  # type: ignore[assignment]
_dead: Table = DeadLetter.__table__  # type: ignore[assignment]
_versions: Table = ModelVersion.__table__  # type: ignore[assignment]

# The claim's statements, built once: a worker claims many small batches, and building and
# hashing a statement per claim cost more than running it.
_ID_LIST = bindparam("ids", expanding=True)
_CLAIM_ANY_MODEL = (
    update(_jobs).where(_jobs.c.id.in_(_ID_LIST), _jobs.c.status.not_in(_FINAL))
    .values(status=JobStatus.running.value, attempts=_jobs.c.attempts + 1, started_at=bindparam("now"),
            worker=bindparam("worker"))
    .returning(_jobs.c.id)
)
_CLAIM = _CLAIM_ANY_MODEL.where(_jobs.c.run_id.in_(select(_runs.c.id).where(_runs.c.model_key == bindparam("key"))))
_STATES = select(_jobs.c.id, _jobs.c.status, _jobs.c.queue).where(_jobs.c.id.in_(_ID_LIST))
_IMAGE_BLOB, _GT_BLOB = _blobs.alias("ib"), _blobs.alias("gb")
_CLAIMED_INPUTS = (
    select(_jobs.c.id, _jobs.c.name, _jobs.c.prompt, _jobs.c.attempts, _jobs.c.gt_source,
           _jobs.c.enqueued_at, _jobs.c.started_at, _runs.c.threshold,
           _IMAGE_BLOB.c.sha256.label("image_sha"), _IMAGE_BLOB.c.data.label("image_data"),
           _GT_BLOB.c.sha256.label("gt_sha"), _GT_BLOB.c.data.label("gt_data"))
    .join(_runs, _runs.c.id == _jobs.c.run_id)
    .outerjoin(_images, _images.c.id == _jobs.c.image_id)
    .outerjoin(_IMAGE_BLOB, _IMAGE_BLOB.c.sha256 == _images.c.sha256)
    .outerjoin(_GT_BLOB, _GT_BLOB.c.sha256 == _jobs.c.gt_sha256)
    .where(_jobs.c.id.in_(_ID_LIST))
)
# One UPDATE per (state, reason) of a batch, over all its job ids: a batch of done jobs is one
# statement, not one row each (on PostgreSQL a row of executemany costs about as much as a statement)
_FINISH = (
    update(_jobs).where(_jobs.c.id.in_(_ID_LIST), _jobs.c.status.not_in(_FINAL))
    .values(status=bindparam("st"), error=bindparam("err"), finished_at=bindparam("now"))
)


# Reads of a whole run, for the report (report/collect.py) and the SEG pump (pacs/results.py):
# named here so that db/ holds every statement over the job tables. Plain columns, one joined
# query: ORM entities cost an identity-map entry each, which dominated for large runs.
# Predictions and metrics are 1:1 with jobs (unique job_id).
_RUN_FRAMES = (
    select(_jobs.c.id, _jobs.c.name, _jobs.c.status, _jobs.c.error, _jobs.c.attempts, _jobs.c.worker,
           _jobs.c.enqueued_at, _jobs.c.started_at, _jobs.c.finished_at, _jobs.c.gt_sha256,
           _images.c.sha256.label("image_sha256"),
           _preds.c.id.label("prediction_id"), _preds.c.model_version_id, _preds.c.mask_sha256, _preds.c.prob_sha256,
           _preds.c.text, _preds.c.threshold, _preds.c.batch_size, _preds.c.preprocess_ms, _preds.c.compute_ms,
           _metrics.c.id.label("metrics_id"), _metrics.c.dice_sweep,
           *[_metrics.c[k].label(f"m_{k}") for k in METRIC_COLUMNS])
    .outerjoin(_images, _images.c.id == _jobs.c.image_id)
    .outerjoin(_preds, _preds.c.job_id == _jobs.c.id)
    .outerjoin(_metrics, _metrics.c.job_id == _jobs.c.id)
    .where(_jobs.c.run_id == bindparam("run_id"))
    .order_by(_jobs.c.name)
)
_RUN_MASKS = (
    select(_jobs.c.id, _jobs.c.name, _jobs.c.status, _preds.c.mask_sha256, _preds.c.model_version_id)
    .outerjoin(_preds, _preds.c.job_id == _jobs.c.id)
    .where(_jobs.c.run_id == bindparam("run_id"))
    .order_by(_jobs.c.name)
)


def find_run(conn: Connection | Session, name: str) -> Row:
    """The `runs` row of that name; NotFound lists the newest runs that exist."""
    row = conn.execute(select(_runs).where(_runs.c.name == name)).one_or_none()
    if row is None:
        names = list(conn.scalars(select(_runs.c.name).order_by(_runs.c.created_at.desc()).limit(21)))
        known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "none yet"
        raise NotFound(f"no run named {name!r}; existing runs: {known}")
    return row


def run_names(conn: Connection | Session, prefix: str) -> list[str]:
    """Names of the runs that start with `prefix` (e.g. the PACS listener's `pacs-`)."""
    return list(conn.scalars(select(_runs.c.name).where(_runs.c.name.startswith(prefix, autoescape=True))))


def run_frames(conn: Connection | Session, run_id: int) -> Sequence[Row]:
    """Every job of a run, ordered by name, with its image, prediction and metrics columns
    (metrics as `m_<name>`, METRIC_COLUMNS): the report's one read of a run."""
    return conn.execute(_RUN_FRAMES, {"run_id": run_id}).all()


def model_versions(conn: Connection | Session, ids: Sequence[int]) -> Sequence[Row]:
    """The `model_versions` rows of these ids (the report's "which model made these predictions")."""
    return conn.execute(select(_versions).where(_versions.c.id.in_(list(ids)))).all() if ids else []


def run_masks(conn: Connection | Session, run_id: int) -> Sequence[Row]:
    """Every job of a run, ordered by name: id, name, status, mask_sha256, model_version_id."""
    return conn.execute(_RUN_MASKS, {"run_id": run_id}).all()


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class RunRef:
    id: int
    name: str
    model_spec: str
    model_key: str | None
    threshold: float
    threshold_source: str | None
    prompt: str
    created: bool  # this call created the run (False: it joined an existing one)


@dataclass
class NewJob:
    """One frame to register. `error` set: the job is stored as failed with that reason."""

    name: str
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    media_type: str | None = None
    gt_mask_png: bytes | None = None
    gt_source: str | None = None
    error: str | None = None
    meta: dict[str, Any] | None = None


@dataclass
class Registered:
    to_send: list[str] = field(default_factory=list)  # ids of the new jobs to send
    names: dict[str, str] = field(default_factory=dict)  # id -> frame name of the jobs to send
    skipped_existing: int = 0
    failed_at_validation: int = 0


@dataclass(frozen=True)
class ClaimedJob:
    id: str
    name: str
    prompt: str
    attempts: int
    image: bytes
    gt_mask_png: bytes | None
    gt_source: str | None
    threshold: float  # the run's threshold (model default or calibrated)
    enqueued_at: datetime | None
    started_at: datetime | None


@dataclass
class Claim:
    jobs: list[ClaimedJob] = field(default_factory=list)
    final: list[str] = field(default_factory=list)  # already finished: nothing to do
    foreign: list[tuple[str, str]] = field(default_factory=list)  # (id, queue) another model version serves
    failed: dict[str, str] = field(default_factory=dict)  # id -> reason (dead-lettered, missing image)
    names: dict[str, str] = field(default_factory=dict)  # id -> frame name of the failed ones (for logs)
    missing: list[str] = field(default_factory=list)  # not in this database


@dataclass
class Outcome:
    """A finished job as the worker hands it to `complete`."""

    job_id: str
    status: JobStatus  # done or no_segmentation
    mask_png: bytes
    prob_png: bytes | None
    text: str | None
    threshold: float
    batch_size: int
    preprocess_ms: float
    compute_ms: float
    metrics: dict[str, Any] | None  # None: no ground truth
    dice_sweep: bytes | None = None  # with metrics and a stored probability map: see models.Metrics


class JobStore:
    """All job SQL. One instance per process and database; thread-safe (one engine, pooled)."""

    def __init__(self, db_url: str, blobs: BlobStore | None = None, *, engine: Engine | None = None) -> None:
        self.db_url = db_url
        self.engine = engine or get_engine(db_url)
        self.blobs = blobs or BlobStore()
        self._dialect = self.engine.dialect.name

    # ------------------------------------------------------------------ producer
    def open_run(self, *, name: str, model_spec: str, model_key: str, dataset: str, prompt: str,
                 threshold: float, threshold_source: str | None = None, split: str | None = None) -> RunRef:
        """Create the run, or join it when it exists with the same model version (concurrent
        producers of one name both succeed); another model under that name is a ConfigError."""
        with self.engine.begin() as conn:
            inserted = self._insert_ignore(conn, _runs, [{
                "name": name, "model_spec": model_spec, "model_key": model_key, "dataset": dataset,
                "prompt": prompt, "threshold": threshold, "threshold_source": threshold_source, "split": split,
                "created_at": utcnow(),
            }], ["name"], returning=_runs.c.id)
            row = conn.execute(select(_runs).where(_runs.c.name == name)).one()
        if row.model_key != model_key:
            raise ConfigError(
                f"run {name!r} exists with model {row.model_spec!r}, not {model_spec!r}; "
                "choose another --run-name to compare models"
            )
        return RunRef(id=row.id, name=row.name, model_spec=row.model_spec, model_key=row.model_key,
                      threshold=row.threshold, threshold_source=row.threshold_source, prompt=row.prompt,
                      created=bool(inserted))

    def run(self, name: str) -> RunRef:
        """The run of that name; NotFound lists the runs that exist."""
        with self.engine.connect() as conn:
            row = find_run(conn, name)
        return RunRef(id=row.id, name=row.name, model_spec=row.model_spec, model_key=row.model_key,
                      threshold=row.threshold, threshold_source=row.threshold_source, prompt=row.prompt,
                      created=False)

    def register(self, run: RunRef, items: Sequence[NewJob], *, queue: str) -> Registered:
        """Store one chunk of frames: image and mask bytes (content-addressed), image rows, job rows.
        Names already in the run are skipped; frames with `error` become failed jobs."""
        out = Registered()
        if not items:
            return out
        now = utcnow()
        # each digest computed once: bytes of 20,000 frames pass through here
        image_sha = {id(j): _sha(j.image) for j in items if j.image}
        gt_sha = {id(j): _sha(j.gt_mask_png) for j in items if j.gt_mask_png and j.error is None}
        blob_rows = self.blobs.rows([(j.image, j.media_type or "application/octet-stream", image_sha[id(j)])
                                     for j in items if j.image]
                                    + [(j.gt_mask_png, "image/png", gt_sha[id(j)]) for j in items if id(j) in gt_sha])
        image_rows = {}
        for j in items:
            if j.image and j.error is None:
                digest = image_sha[id(j)]
                image_rows[digest] = {"sha256": digest, "width": j.width, "height": j.height, "mode": j.mode or "?",
                                      "media_type": j.media_type or "application/octet-stream"}
        with self.engine.begin() as conn:
            self._insert_ignore(conn, _blobs, blob_rows, ["sha256"])
            ids: dict[str, int] = {}
            if image_rows:
                self._insert_ignore(conn, _images, list(image_rows.values()), ["sha256"])
                ids = dict(conn.execute(select(_images.c.sha256, _images.c.id)
                                        .where(_images.c.sha256.in_(list(image_rows)))).all())
            rows = []
            for j in items:
                failed = j.error is not None
                rows.append({
                    "id": str(uuid.uuid4()), "run_id": run.id, "name": j.name, "prompt": run.prompt, "queue": queue,
                    "status": (JobStatus.failed if failed else JobStatus.pending).value, "attempts": 0,
                    "image_id": None if failed or not j.image else ids[image_sha[id(j)]],
                    "gt_sha256": gt_sha.get(id(j)), "gt_source": j.gt_source, "error": j.error,
                    "finished_at": now if failed else None, "created_at": now, "meta": j.meta,
                })
            inserted = self._insert_ignore(conn, _jobs, rows, ["run_id", "name"], returning=_jobs.c.id)
        failed_ids = {r["id"] for r in rows if r["error"] is not None}
        out.to_send = [i for i in inserted if i not in failed_ids]
        sent = set(out.to_send)
        out.names = {r["id"]: r["name"] for r in rows if r["id"] in sent}
        out.failed_at_validation = len([i for i in inserted if i in failed_ids])
        out.skipped_existing = len(rows) - len(inserted)
        return out

    def mark_sent(self, job_ids: Sequence[str]) -> None:
        """pending -> queued. Called before the messages go out: a fast worker may claim at once."""
        if not job_ids:
            return
        with self.engine.begin() as conn:
            conn.execute(update(_jobs).where(_jobs.c.id.in_(list(job_ids)), _jobs.c.status == JobStatus.pending.value)
                         .values(status=JobStatus.queued.value, enqueued_at=utcnow()))

    # ------------------------------------------------------------------ worker
    def claim(self, job_ids: Sequence[str], *, worker: str, model_key: str | None, max_attempts: int) -> Claim:
        """Mark the batch running (attempts + 1) and load what the model needs, in one transaction.
        Jobs of another model version are left untouched and returned as `foreign`."""
        out = Claim()
        ids = list(dict.fromkeys(job_ids))
        if not ids:
            return out
        params = {"ids": ids, "now": utcnow(), "worker": worker, "key": model_key}
        with self.engine.begin() as conn:
            claimed = set(conn.execute(_CLAIM if model_key is not None else _CLAIM_ANY_MODEL, params).scalars())
            rest = [i for i in ids if i not in claimed]
            if rest:
                for row in conn.execute(_STATES, {"ids": rest}):
                    (out.final.append(row.id) if row.status in _FINAL else out.foreign.append((row.id, row.queue)))
                known = set(out.final) | {i for i, _ in out.foreign}
                out.missing = [i for i in rest if i not in known]
            if not claimed:
                return out
            rows = conn.execute(_CLAIMED_INPUTS, {"ids": list(claimed)}).all()
            dead: list[tuple[str, str, int]] = []
            for row in rows:
                out.names[row.id] = row.name
                if row.attempts > max_attempts:
                    reason = (f"{row.name}: gave up after {row.attempts - 1} attempts (the worker died or was killed "
                              "each time); inspect the file, then `sa2va-queue requeue --dead`")
                    dead.append((row.id, reason, row.attempts - 1))
                    continue
                if row.image_sha is None:
                    out.failed[row.id] = f"{row.name}: no image stored for this job; re-enqueue the file"
                    continue
                try:
                    image = self.blobs.read(row.image_sha, row.image_data)
                    gt = self.blobs.read(row.gt_sha, row.gt_data) if row.gt_sha else None
                except NotFound as exc:
                    out.failed[row.id] = f"{row.name}: {exc}"
                    continue
                out.jobs.append(ClaimedJob(
                    id=row.id, name=row.name, prompt=row.prompt, attempts=row.attempts, image=image, gt_mask_png=gt,
                    gt_source=row.gt_source, threshold=float(row.threshold), enqueued_at=_aware(row.enqueued_at),
                    started_at=_aware(row.started_at)))
            if dead:
                self._dead_letter(conn, dead)
                out.failed.update({job_id: reason for job_id, reason, _ in dead})
            if out.failed:
                self._finish(conn, [(i, JobStatus.failed, r) for i, r in out.failed.items() if i not in {d[0] for d in dead}])
        return out

    def complete(self, outcomes: Sequence[Outcome], failures: dict[str, str] | None = None, *,
                 model_version_id: int) -> None:
        """Predictions, masks, metrics and final states of a batch (and its failed jobs) in one
        transaction. A job already final keeps its first result."""
        failures = failures or {}
        if not outcomes and not failures:
            return
        blob_rows = self.blobs.rows([(o.mask_png, "image/png") for o in outcomes]
                                    + [(o.prob_png, "image/png") for o in outcomes if o.prob_png is not None])
        now = utcnow()
        preds = [{
            "job_id": o.job_id, "model_version_id": model_version_id, "mask_sha256": _sha(o.mask_png),
            "prob_sha256": _sha(o.prob_png) if o.prob_png is not None else None, "text": o.text,
            "threshold": o.threshold, "batch_size": o.batch_size, "preprocess_ms": o.preprocess_ms,
            "compute_ms": o.compute_ms, "created_at": now,
        } for o in outcomes]
        mets = [{"job_id": o.job_id, "created_at": now, **o.metrics, "dice_sweep": o.dice_sweep}
                for o in outcomes if o.metrics is not None]
        with self.engine.begin() as conn:
            self._insert_ignore(conn, _blobs, blob_rows, ["sha256"])
            self._insert_ignore(conn, _preds, preds, ["job_id"])
            self._insert_ignore(conn, _metrics, mets, ["job_id"])
            self._finish(conn, [(o.job_id, o.status, None) for o in outcomes]
                         + [(i, JobStatus.failed, r) for i, r in failures.items()])

    def fail(self, failures: dict[str, str]) -> None:
        """Record why these jobs failed (bad input, model error): final, not retried."""
        if failures:
            with self.engine.begin() as conn:
                self._finish(conn, [(i, JobStatus.failed, r) for i, r in failures.items()])

    def dead_letter(self, failures: dict[str, str]) -> None:
        """Failed after persistent transient errors: failed, with a dead-letter row for `requeue --dead`."""
        if not failures:
            return
        with self.engine.begin() as conn:
            attempts = dict(conn.execute(select(_jobs.c.id, _jobs.c.attempts)
                                         .where(_jobs.c.id.in_(list(failures)))).all())
            self._dead_letter(conn, [(i, r, attempts.get(i, 0)) for i, r in failures.items() if i in attempts])

    def model_version_id(self, backend: str, params: dict[str, Any], checkpoint_hash: str | None,
                         code_version: str) -> int:
        """The id of this model version's row, created on first use (safe under concurrent workers)."""
        fields = {"backend": backend, "params": params, "checkpoint_hash": checkpoint_hash,
                  "code_version": code_version}
        key = hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
        with self.engine.begin() as conn:
            self._insert_ignore(conn, _versions, [{"key": key, "created_at": utcnow(), **fields}], ["key"])
            return conn.execute(select(_versions.c.id).where(_versions.c.key == key)).scalar_one()

    # ------------------------------------------------------------------ janitor, requeue
    def stale(self, older_than_s: float, *, statuses: Iterable[JobStatus] | None = None,
              run_id: int | None = None) -> list[tuple[str, str]]:
        """(id, queue) of stale jobs: not final, untouched for `older_than_s` (the one definition)."""
        wanted = [s.value for s in (statuses or (JobStatus.pending, JobStatus.queued, JobStatus.running))]
        cutoff = self._db_time(utcnow() - timedelta(seconds=older_than_s))
        stamp = func.coalesce(_jobs.c.started_at, _jobs.c.enqueued_at, _jobs.c.created_at)
        query = select(_jobs.c.id, _jobs.c.queue).where(_jobs.c.status.in_(wanted), stamp <= cutoff)
        if run_id is not None:
            query = query.where(_jobs.c.run_id == run_id)
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(query)]

    def running_workers(self) -> dict[str, int]:
        """Worker name -> jobs it holds as running."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_jobs.c.worker, func.count()).where(_jobs.c.status == JobStatus.running.value)
                                .group_by(_jobs.c.worker)).all()
        return {w or "?": n for w, n in rows}

    def orphaned(self, dead_workers: Sequence[str]) -> list[tuple[str, str]]:
        """(id, queue) of jobs running on workers that no longer answer."""
        if not dead_workers:
            return []
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                select(_jobs.c.id, _jobs.c.queue).where(_jobs.c.status == JobStatus.running.value,
                                                        _jobs.c.worker.in_(list(dead_workers))))]

    def unfinished(self, run_id: int) -> list[tuple[str, str]]:
        """(id, queue) of the run's jobs that are not final (a resumed run sends them again)."""
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(
                select(_jobs.c.id, _jobs.c.queue).where(_jobs.c.run_id == run_id,
                                                        _jobs.c.status.not_in(_FINAL)))]

    def requeue_targets(self, *, run_name: str | None, stale_after_s: float | None, failed: bool,
                        dead: bool) -> list[tuple[str, str]]:
        """(id, queue) of: stale jobs (`stale_after_s`, None: none); failed jobs that have an image
        (`failed`); dead-lettered jobs not yet requeued (`dead`)."""
        run_id = self.run(run_name).id if run_name is not None else None
        out: dict[str, str] = {}
        if stale_after_s is not None:
            out.update(self.stale(stale_after_s, run_id=run_id))
        conds = []
        if failed:
            conds.append((_jobs.c.status == JobStatus.failed.value) & _jobs.c.image_id.is_not(None))
        if dead:
            pending_dead = select(_dead.c.job_id).where(_dead.c.requeued_at.is_(None))
            conds.append(_jobs.c.id.in_(pending_dead) & (_jobs.c.status == JobStatus.failed.value))
        if conds:
            query = select(_jobs.c.id, _jobs.c.queue).where(or_(*conds))
            if run_id is not None:
                query = query.where(_jobs.c.run_id == run_id)
            with self.engine.connect() as conn:
                out.update(conn.execute(query).all())
        return list(out.items())

    def reset(self, job_ids: Sequence[str]) -> None:
        """Back to pending before a re-send: failed jobs start over (attempts reset, dead letters
        stamped); stale and orphaned ones keep their attempts."""
        if not job_ids:
            return
        ids, now = list(job_ids), utcnow()
        with self.engine.begin() as conn:
            conn.execute(update(_dead).where(_dead.c.job_id.in_(ids), _dead.c.requeued_at.is_(None))
                         .values(requeued_at=now))
            conn.execute(update(_jobs).where(_jobs.c.id.in_(ids), _jobs.c.status == JobStatus.failed.value)
                         .values(status=JobStatus.pending.value, error=None, attempts=0, finished_at=None))
            conn.execute(update(_jobs).where(_jobs.c.id.in_(ids), _jobs.c.status.not_in(_FINAL))
                         .values(status=JobStatus.pending.value))

    # ------------------------------------------------------------------ run, status
    def counts(self, run_name: str | None = None, limit: int = 20,
               dead_workers: Sequence[str] = ()) -> list[tuple[str, dict[str, int]]]:
        """Newest runs first: (run name, {status: count, 'dead-lettered': n}), in three queries.
        Running jobs held by `dead_workers` count as 'orphaned', not running."""
        with self.engine.connect() as conn:
            runs_q = select(_runs.c.id, _runs.c.name).order_by(_runs.c.created_at.desc(), _runs.c.id.desc())
            runs_q = runs_q.where(_runs.c.name == run_name) if run_name is not None else runs_q.limit(limit)
            runs = conn.execute(runs_q).all()
            if not runs:
                if run_name is not None:
                    self.run(run_name)  # NotFound, listing the runs that exist
                return []
            ids = [r for r, _ in runs]
            counts: dict[int, dict[str, int]] = {r: {} for r in ids}
            state = _jobs.c.status
            if dead_workers:
                state = case(((_jobs.c.status == JobStatus.running.value) & _jobs.c.worker.in_(list(dead_workers)),
                              "orphaned"), else_=_jobs.c.status)
            for run_id, status, n in conn.execute(
                    select(_jobs.c.run_id, state, func.count()).where(_jobs.c.run_id.in_(ids))
                    .group_by(_jobs.c.run_id, state)):
                counts[run_id][status] = n
            for run_id, n in conn.execute(
                    select(_jobs.c.run_id, func.count()).select_from(_dead.join(_jobs, _dead.c.job_id == _jobs.c.id))
                    .where(_jobs.c.run_id.in_(ids), _dead.c.requeued_at.is_(None)).group_by(_jobs.c.run_id)):
                counts[run_id]["dead-lettered"] = n
        return [(name, counts[run_id]) for run_id, name in runs]

    def dice_summary(self, run_names: Sequence[str], near: float) -> dict[str, tuple[int, int, float | None, float | None]]:
        """Run name -> (frames scored, frames with Dice >= near, mean Dice, mean Dice of the rest),
        for the leak guard in `status` (one query)."""
        if not run_names:
            return {}
        is_near = _metrics.c.dice >= near
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(_runs.c.name, func.count(_metrics.c.dice), func.sum(case((is_near, 1), else_=0)),
                       func.avg(_metrics.c.dice), func.avg(case((is_near, None), else_=_metrics.c.dice)))
                .select_from(_metrics.join(_jobs, _jobs.c.id == _metrics.c.job_id).join(_runs, _runs.c.id == _jobs.c.run_id))
                .where(_runs.c.name.in_(list(run_names))).group_by(_runs.c.name)).all()
        return {name: (int(n), int(k or 0), None if m is None else float(m), None if r is None else float(r))
                for name, n, k, m, r in rows}

    def models(self) -> dict[str, tuple[str, int]]:
        """Model key -> (a spec of it, unfinished jobs) for every model version that has runs."""
        with self.engine.connect() as conn:
            specs = dict(conn.execute(select(_runs.c.model_key, func.max(_runs.c.model_spec))
                                      .group_by(_runs.c.model_key)).all())
            open_ = dict(conn.execute(
                select(_runs.c.model_key, func.count()).select_from(_jobs.join(_runs, _runs.c.id == _jobs.c.run_id))
                .where(_jobs.c.status.not_in(_FINAL)).group_by(_runs.c.model_key)).all())
        return {k: (spec, open_.get(k, 0)) for k, spec in specs.items() if k is not None}

    def run_counts(self, run_id: int) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(_jobs.c.status, func.count()).where(_jobs.c.run_id == run_id)
                                .group_by(_jobs.c.status)).all()
        return {status: n for status, n in rows}

    # ------------------------------------------------------------------ internals
    def _finish(self, conn: Connection, items: Sequence[tuple[str, JobStatus, str | None]]) -> None:
        if not items:
            return
        now = utcnow()
        groups: dict[tuple[str, str | None], list[str]] = {}
        for job_id, status, reason in items:
            groups.setdefault((status.value, reason), []).append(job_id)
        for (status_value, reason), ids in groups.items():
            conn.execute(_FINISH, {"ids": ids, "st": status_value, "err": reason, "now": now})

    def _dead_letter(self, conn: Connection, items: Sequence[tuple[str, str, int]]) -> None:
        self._finish(conn, [(i, JobStatus.failed, r) for i, r, _ in items])
        now = utcnow()
        conn.execute(insert(_dead), [{"job_id": i, "error": r, "attempts": a, "created_at": now} for i, r, a in items])

    def _insert_ignore(self, conn: Connection, table: Table, rows: list[dict[str, Any]], keys: list[str],
                       returning: Any = None) -> list[Any]:
        """INSERT ... ON CONFLICT (keys) DO NOTHING for many rows in one statement; with `returning`,
        the values of the rows actually inserted."""
        if not rows:
            return []
        seen, unique = set(), []
        for row in rows:  # one statement must not hit the same key twice
            k = tuple(row[c] for c in keys)
            if k not in seen:
                seen.add(k)
                unique.append(row)
        stmt = _insert_ignore_statement(self._dialect, table.name, tuple(keys))
        if returning is None:
            conn.execute(stmt, unique)
            return []
        return list(conn.execute(stmt.returning(returning), unique).scalars())

    def _db_time(self, value: datetime) -> datetime:
        # SQLite stores naive UTC; PostgreSQL compares aware timestamps.
        return value.replace(tzinfo=None) if self._dialect == "sqlite" else value


@lru_cache(maxsize=None)
def _insert_ignore_statement(dialect_name: str, table_name: str, keys: tuple[str, ...]) -> Any:
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    return dialect.insert(Base.metadata.tables[table_name]).on_conflict_do_nothing(index_elements=list(keys))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _aware(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
