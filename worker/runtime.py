"""What a worker process owns: the model (loaded once, before any job is taken) and its pipeline."""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from sa2va_queue.core.exceptions import ModelError, Sa2vaQueueError
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import JobStore
from sa2va_queue.db.session import check_database
from sa2va_queue.worker.backends import build_model
from sa2va_queue.worker.backends.base import SegmentationModel
from sa2va_queue.worker.observability import WorkerMetrics
from sa2va_queue.worker.pipeline import JobPipeline

log = logging.getLogger(__name__)


@dataclass
class WorkerRuntime:
    settings: Settings
    spec: ModelSpec
    model: SegmentationModel
    store: JobStore
    pipeline: JobPipeline
    version_id: int
    metrics: WorkerMetrics

    def close(self) -> None:
        self.pipeline.stop()


def start_runtime(settings: Settings, spec: ModelSpec | str, *, worker: str, device: str = "cpu") -> WorkerRuntime:
    """Build and set up the model, register its version, start the pipeline. Raises on any failure."""
    spec = ModelSpec.parse(spec)
    db_url = settings.sqlalchemy_url
    check_database(db_url)
    model = build_model(spec)
    try:
        model.setup(device, compile=settings.compile_model)
    except Sa2vaQueueError:
        raise
    except Exception as exc:
        raise ModelError(f"model {spec} failed to load: {type(exc).__name__}: {exc}") from exc
    store = JobStore(db_url, BlobStore(settings.blob_dir))
    info = model.version
    version_id = store.model_version_id(info.backend, info.params, info.checkpoint_hash, code_version())
    metrics = WorkerMetrics()
    observers = {"queue_wait": metrics.queue_wait.observe, "preprocess": metrics.preprocess.observe,
                 "end_to_end": metrics.end_to_end.observe}
    placement = device_map_summary(model, device)
    metrics.model.info({"spec": str(spec), "key": spec.key, "version_id": str(version_id), "backend": info.backend,
                        "checkpoint": info.checkpoint_hash or "", "device": device, "device_map": placement})
    pipeline = JobPipeline(
        store, model, worker=worker, model_key=spec.key, version_id=version_id,
        max_batch_size=settings.max_batch_size, max_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_attempts=settings.max_attempts, store_probabilities=settings.store_probabilities,
        metric_processes=settings.metric_processes, metric_nice=settings.metric_nice,
        on_batch=metrics.observe_batch, observe=lambda name, value: observers[name](value),
        pseudonymizer=Pseudonymizer.from_settings(settings),
    ).start()
    log.info("model %s ready (key %s, version id %d, device %s, device map %s)", spec, spec.key, version_id, device,
             placement, extra={"model": str(spec), "model_key": spec.key, "device": device, "device_map": placement})
    return WorkerRuntime(settings=settings, spec=spec, model=model, store=store, pipeline=pipeline,
                         version_id=version_id, metrics=metrics)


def device_map_summary(model: SegmentationModel, device: str) -> str:
    """Where the weights are: `cuda:0 15.5 GiB, cuda:1 15.2 GiB` for a device map, else the device."""
    placement = getattr(model, "placement", None)
    per_device = getattr(placement, "bytes_per_device", None)
    if not per_device:
        return device
    return ", ".join(f"cuda:{d} {n / 2**30:.1f} GiB" for d, n in sorted(per_device.items()))


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout (recorded per model version)."""
    try:
        base = version("sa2va-queue")
    except PackageNotFoundError:
        base = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{base}+{commit}" if commit else base
