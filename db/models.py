"""Typed SQLAlchemy 2 models. Schema changes go through an Alembic revision in db/migrations.

    runs ──< jobs >── images ── blobs (content-addressed bytes)
              │
              ├── predictions ── model_versions
              ├── metrics (computed from the stored prediction and the ground truth only)
              └── dead_letters (jobs that used up their attempts, until requeued)
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class JobStatus(str, enum.Enum):
    pending = "pending"  # row written, message not yet confirmed sent to the broker
    queued = "queued"  # message sent
    running = "running"  # claimed by a worker
    done = "done"  # prediction (and metrics, when ground truth exists) stored
    no_segmentation = "no_segmentation"  # the model answered without a [SEG]: empty mask stored
    failed = "failed"  # reason in jobs.error


FINAL_STATUSES = (JobStatus.done, JobStatus.no_segmentation, JobStatus.failed)


class Blob(Base):
    """Bytes addressed by their sha256: images, masks, probability maps."""

    __tablename__ = "blobs"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    media_type: Mapped[str] = mapped_column(String(64))
    # NULL when the bytes live in the shared blob directory (SA2VA_BLOB_DIR) instead.
    data: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ModelVersion(Base):
    """One record per distinct model: backend, parameters or checkpoint hash, code version."""

    __tablename__ = "model_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 of the fields below
    backend: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    checkpoint_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    code_version: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    model_spec: Mapped[str] = mapped_column(String(500))
    # routing key of the spec (ModelSpec.key): only workers of this exact model version claim its jobs
    model_key: Mapped[str | None] = mapped_column(String(80), nullable=True, index=True)
    dataset: Mapped[str] = mapped_column(Text)
    split: Mapped[str | None] = mapped_column(String(500), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    threshold: Mapped[float] = mapped_column(Float, default=0.5)
    threshold_source: Mapped[str | None] = mapped_column(String(300), nullable=True)  # model default, or calibration
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    jobs: Mapped[list[Job]] = relationship(back_populates="run")


class Image(Base):
    """One distinct image content; the same frame in several runs shares a row."""

    __tablename__ = "images"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    mode: Mapped[str] = mapped_column(String(16))  # PIL mode of the file: L, I;16, RGB, ...
    media_type: Mapped[str] = mapped_column(String(64))


class Job(Base):
    """One image of one run. The id is also the Celery task id."""

    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("run_id", "name", name="uq_jobs_run_id_name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    name: Mapped[str] = mapped_column(String(1000))  # path relative to the dataset root
    image_id: Mapped[int | None] = mapped_column(ForeignKey("images.id"), nullable=True)
    gt_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), nullable=True)
    gt_source: Mapped[str | None] = mapped_column(String(1000), nullable=True)
    prompt: Mapped[str] = mapped_column(Text)
    queue: Mapped[str] = mapped_column(String(64))
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, name="job_status", native_enum=False, length=32), index=True
    )
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # where the frame came from beyond its name, e.g. DICOM UIDs and frame number
    meta: Mapped[dict | None] = mapped_column(JSON, nullable=True)

    run: Mapped[Run] = relationship(back_populates="jobs")
    image: Mapped[Image | None] = relationship()
    prediction: Mapped[Prediction | None] = relationship(back_populates="job")
    metrics: Mapped[Metrics | None] = relationship(back_populates="job")


class Prediction(Base):
    __tablename__ = "predictions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)  # exactly one per job
    model_version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    mask_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    prob_sha256: Mapped[str | None] = mapped_column(ForeignKey("blobs.sha256"), nullable=True)
    text: Mapped[str | None] = mapped_column(Text, nullable=True)
    threshold: Mapped[float] = mapped_column(Float)
    batch_size: Mapped[int] = mapped_column(Integer)
    preprocess_ms: Mapped[float] = mapped_column(Float)
    compute_ms: Mapped[float] = mapped_column(Float)  # the whole batch's model time
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="prediction")
    model_version: Mapped[ModelVersion] = relationship()


class Metrics(Base):
    """Computed from the predicted mask and the ground truth only, stored with the prediction.

    NULL means undefined for that frame (see sa2va_queue/metrics.py for the empty-mask rules).
    """

    __tablename__ = "metrics"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), unique=True)  # its prediction: same job_id
    iou: Mapped[float | None] = mapped_column(Float, nullable=True)
    dice: Mapped[float | None] = mapped_column(Float, nullable=True)
    precision: Mapped[float | None] = mapped_column(Float, nullable=True)
    recall: Mapped[float | None] = mapped_column(Float, nullable=True)
    specificity: Mapped[float | None] = mapped_column(Float, nullable=True)
    accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)
    cldice: Mapped[float | None] = mapped_column(Float, nullable=True)
    hd95: Mapped[float | None] = mapped_column(Float, nullable=True)  # px; surface distances, see core/metrics.py
    assd: Mapped[float | None] = mapped_column(Float, nullable=True)  # px
    pred_fraction: Mapped[float] = mapped_column(Float)
    true_fraction: Mapped[float] = mapped_column(Float)
    exact_match: Mapped[bool] = mapped_column(Boolean)  # prediction == ground truth, pixel for pixel
    # Dice at each core.metrics.SWEEP_GRID threshold, then at the prediction's threshold, of the
    # stored probability map: float64 little-endian. NULL without a stored map (or before 0006).
    dice_sweep: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="metrics")


class DeadLetter(Base):
    """A job that used up its attempts. `requeue --dead` re-sends it and stamps `requeued_at`."""

    __tablename__ = "dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    requeued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Calibration(Base):
    """A threshold chosen for one model version (ModelSpec.key) on a run's validation frames.

    Later runs of that model version use the latest one (db/calibrations.py); the frames it was
    chosen on are kept by image hash so a report can tell whether a comparison is held out.
    """

    __tablename__ = "calibrations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_key: Mapped[str] = mapped_column(String(80), index=True)
    threshold: Mapped[float] = mapped_column(Float)
    run_name: Mapped[str] = mapped_column(String(200))
    n_frames: Mapped[int] = mapped_column(Integer)
    dice: Mapped[float] = mapped_column(Float)  # mean Dice at `threshold` on those frames (optimistic there)
    image_sha256s: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DicomResult(Base):
    """A DICOM Segmentation built for one source instance of a PACS run, and its delivery state.

    The SEG's bytes are a blob; `frames` maps source frame numbers to the jobs (and so the
    predictions) it holds. Written only by db/dicom_results.py.
    """

    __tablename__ = "dicom_results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), index=True)
    source_key: Mapped[str] = mapped_column(String(200))  # instance file name within the run's dataset
    source_sop_uid: Mapped[str] = mapped_column(String(64))
    study_uid: Mapped[str] = mapped_column(String(64))
    seg_sop_uid: Mapped[str] = mapped_column(String(64), unique=True)
    seg_series_uid: Mapped[str] = mapped_column(String(64))
    seg_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id"), nullable=True)
    frames: Mapped[dict] = mapped_column(JSON)  # {"<source frame number>": "<job id>"}
    destination: Mapped[str | None] = mapped_column(String(300), nullable=True)  # AET@host:port; NULL: kept
    status: Mapped[str] = mapped_column(String(16), index=True)  # pending | sent | failed | kept
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
