"""The producer: frames into the job store a chunk at a time, then their messages to the broker.

Each chunk's rows (and its image and mask bytes, content-addressed) are committed before its
messages are sent, so a broker that loses messages can be refilled from the database (the
janitor does it, or `sa2va-queue requeue --stale`). Frames stream: the first chunk is being served
while later ones are still being read, and memory holds one window of frames, not the dataset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from typing import Callable, Iterable, Iterator

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError
from sqlalchemy.orm import Session

from sa2va_queue.core.broker import make_celery, publish, queue_names
from sa2va_queue.core.exceptions import ServiceUnavailable
from sa2va_queue.core.imaging import encode_mask
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.names import validate_run_name
from sa2va_queue.core.pseudonyms import Pseudonymizer
from sa2va_queue.core.settings import Settings
from sa2va_queue.db import calibrations
from sa2va_queue.db.blobs import BlobStore
from sa2va_queue.db.jobstore import JobStore, NewJob, RunRef
from sa2va_queue.producer.dataset import Frame

CHUNK = 256
# The first chunk is small and each next one twice the last, up to CHUNK: a worker gets its first
# batch after 16 frames are read and registered instead of 256 (about a second sooner on 512 px
# frames), and long runs still register 256 frames per transaction.
FIRST_CHUNK = 16


@dataclass
class Produced:
    run: RunRef
    queue: str
    sent: int = 0
    skipped_existing: int = 0
    failed_at_validation: int = 0
    job_ids: list[str] = field(default_factory=list)  # the jobs registered (and sent, unless send=False)


def open_run(store: JobStore, *, name: str, spec: ModelSpec, dataset: str, prompt: str,
             split: str | None = None) -> RunRef:
    """Create or join the run. Its threshold: the newest calibration of this model version when
    there is one (db/calibrations.py), else the spec's; where it came from is recorded."""
    with Session(store.engine) as session:
        cal = calibrations.latest_calibration(session, spec.key)
        use_cal = cal is not None and "threshold" not in spec.options  # an explicit ?threshold= wins
        threshold = cal.threshold if use_cal else spec.threshold
        source = calibrations.source_text(cal if use_cal else None)
    return store.open_run(name=name, model_spec=str(spec), model_key=spec.key, dataset=dataset, prompt=prompt,
                          threshold=threshold, threshold_source=source, split=split)


def enqueue_frames(settings: Settings, frames: Iterable[Frame], *, model: "str | ModelSpec", run_name: str,
                   dataset: str = "(frames given by a program)", urgent: bool = False, send: bool = True,
                   on_progress: Callable[[int], None] | None = None) -> Produced:
    """The producer as a function (PACS listener, Python API, tests): open or join `run_name` for
    `model` and register + send `frames`. `send=False` stores the jobs without sending them."""
    spec = ModelSpec.parse(model)
    store = JobStore(settings.sqlalchemy_url, BlobStore(settings.blob_dir))
    run = open_run(store, name=validate_run_name(run_name), spec=spec, dataset=dataset, prompt=settings.prompt)
    app = make_celery(settings)
    try:
        return produce(store, app, frames, run, urgent=urgent, on_progress=on_progress, send=send,
                       pseudonymizer=Pseudonymizer.from_settings(settings))
    finally:
        app.close()


def produce(store: JobStore, app: Celery, frames: Iterable[Frame], run: RunRef, *, urgent: bool = False,
            chunk: int = CHUNK, on_progress: Callable[[int], None] | None = None, send: bool = True,
            pseudonymizer: Pseudonymizer | None = None) -> Produced:
    """Register and send every frame, chunk by chunk. Frames already in the run are skipped;
    frames with an error become failed jobs (counted in the report, never lost)."""
    spec = ModelSpec.parse(run.model_spec)
    urgent_q, bulk_q = queue_names(spec)
    out = Produced(run=run, queue=urgent_q if urgent else bulk_q)
    for part in _chunks(frames, chunk):
        reg = store.register(run, [to_new_job(f) for f in part], queue=out.queue)
        out.job_ids += reg.to_send
        out.skipped_existing += reg.skipped_existing
        out.failed_at_validation += reg.failed_at_validation
        if not send:
            continue
        store.mark_sent(reg.to_send)  # before sending: a fast worker may claim a job at once
        try:
            out.sent += publish(app, reg.to_send, out.queue, labels=_labels(run, reg.names, pseudonymizer))
        except (KombuOperationalError, RedisError, ConnectionError, OSError) as exc:
            raise ServiceUnavailable(
                f"broker stopped answering after {out.sent} jobs were sent ({exc}); the rest are safe in the "
                "database: they are re-sent by a worker's janitor, or run `sa2va-queue requeue --stale`"
            ) from None
        if on_progress is not None:
            on_progress(len(part))
    return out


def to_new_job(frame: Frame) -> NewJob:
    gt_png = frame.gt_mask_png
    if gt_png is None and frame.gt_mask is not None and frame.error is None:
        gt_png = encode_mask(frame.gt_mask)
    return NewJob(name=frame.name, image=frame.data or None, width=frame.width, height=frame.height,
                  mode=frame.mode, media_type=frame.media_type, gt_mask_png=gt_png, gt_source=frame.gt_source,
                  error=frame.error, meta=frame.meta)


def _labels(run: RunRef, names: dict[str, str], pseudonymizer: Pseudonymizer | None) -> dict[str, dict[str, str]]:
    # Flower shows keyword arguments: run, frame and model. Frame names may hold patient ids, so
    # they travel pseudonymised (keyed, core/pseudonyms.py), or not at all without a key.
    out = {}
    for job_id, name in names.items():
        out[job_id] = {"run": run.name, "model": run.model_spec}
        if pseudonymizer is not None:
            out[job_id]["frame"] = pseudonymizer.name(name)
    return out


def _chunks(items: Iterable[Frame], size: int) -> Iterator[list[Frame]]:
    it, n = iter(items), min(FIRST_CHUNK, size)
    while part := list(islice(it, n)):
        yield part
        n = min(2 * n, size)
