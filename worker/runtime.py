"""What a worker process owns: the model (loaded once, before any job is taken) and its batcher."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from dataclasses import dataclass

from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.session import check_database, session_scope
from sa2va_queue.core.exceptions import ModelError, Sa2vaQueueError
from sa2va_queue.core.settings import Settings
from sa2va_queue.worker.backends import build_model
from sa2va_queue.worker.backends.base import ModelSpec, SegmentationModel, SegmentationRequest, SegmentationResult
from sa2va_queue.worker.batcher import MicroBatcher
from sa2va_queue.worker.jobs import model_version_id
from sa2va_queue.worker.observability import WorkerMetrics

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    spec: ModelSpec
    model: SegmentationModel
    batcher: MicroBatcher
    blobs: BlobStore
    db_url: str
    version_id: int
    metrics: WorkerMetrics

    @property
    def threshold(self) -> float:
        return float(self.model.threshold)

    def submit(self, request: SegmentationRequest) -> tuple["Future[tuple[SegmentationResult, dict]]", float]:
        """Preprocess in the calling (job) thread, so it overlaps the batch on the model; queue it."""
        start = time.perf_counter()
        item = self.model.preprocess(request)
        elapsed = time.perf_counter() - start
        self.metrics.preprocess.observe(elapsed)
        return self.batcher.submit(item), elapsed * 1000.0

    def close(self) -> None:
        self.batcher.stop()


def start_runtime(settings: Settings, spec: ModelSpec | str, device: str = "cpu") -> WorkerRuntime:
    """Build and set up the model, register its version, start the batcher. Raises on any failure."""
    spec = ModelSpec.parse(spec) if isinstance(spec, str) else spec
    db_url = settings.sqlalchemy_url
    check_database(db_url)
    model = build_model(spec)
    try:
        model.setup(device)
    except Sa2vaQueueError:
        raise
    except Exception as exc:
        raise ModelError(f"model {spec} failed to load: {type(exc).__name__}: {exc}") from exc
    with session_scope(db_url) as session:
        version_id = model_version_id(session, model.version)
    metrics = WorkerMetrics()
    batcher = MicroBatcher(
        model.predict,
        max_batch_size=settings.max_batch_size,
        max_delay_s=settings.max_queue_delay_ms / 1000.0,
        on_batch=metrics.observe_batch,
    ).start()
    log.info("model %s ready (version id %d)", spec, version_id)
    return WorkerRuntime(
        settings=settings,
        spec=spec,
        model=model,
        batcher=batcher,
        blobs=BlobStore(settings.blob_dir),
        db_url=db_url,
        version_id=version_id,
        metrics=metrics,
    )
