"""A small Python API for scripts: enqueue files, folders or arrays, wait, get the masks back as
numpy arrays, write the report. It goes through the same producer and job store as the CLI.

    from sa2va_queue.api import Client
    from sa2va_queue.core.settings import Settings

    with Client.local(Settings.load(data_dir=Path("work")), model="vesselness") as client:  # private stack
        job = client.enqueue(["frames/", some_uint8_array], run="study-42")
        client.wait(job)                        # {"done": 21, "failed": 0, ...}
        masks = client.masks(job)               # {frame name: bool array (H, W)}
        paths = client.report(job)              # {"html": Path, "json": Path, "md": Path}

`Client(settings)` talks to a deployment (SA2VA_BROKER_URL / SA2VA_DATABASE_URL, workers already
running); `Client.local(settings, model=...)` starts what `sa2va-queue run` starts (a private
Redis, SQLite in the data dir, one local worker of that model) and stops it on leaving the block.
"""

from __future__ import annotations

import contextlib
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

import numpy as np
from PIL import Image

from sa2va_queue.core.exceptions import ConfigError, InputError, WaitTimeout
from sa2va_queue.core.imaging import decode_mask, decode_probability
from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.core.names import validate_run_name
from sa2va_queue.core.settings import Settings
from sa2va_queue.db.models import FINAL_STATUSES
from sa2va_queue.producer.dataset import DatasetScan, Frame
from sa2va_queue.producer.enqueue import Produced, enqueue_frames

Item = Union[str, Path, np.ndarray]
Items = Union[Item, Sequence[Item], Mapping[str, np.ndarray]]
_FINAL = {s.value for s in FINAL_STATUSES}


@dataclass(frozen=True)
class Enqueued:
    """What `enqueue` stored and sent. Pass it (or its `run` name) to wait, masks and report."""

    run: str
    model: str
    queue: str
    sent: int
    skipped_existing: int  # already in the run (same name): not sent again
    failed_at_validation: int  # unreadable inputs: stored as failed jobs with the reason
    issues: list[str] = field(default_factory=list)  # input problems found on the way, one line each


RunLike = Union[str, Enqueued]


class Client:
    """Scripts' access to sa2va-queue; see the module docstring."""

    def __init__(self, settings: Settings, *, _stack: Any = None) -> None:
        if settings.is_local and _stack is None:
            raise ConfigError("Client(settings) needs SA2VA_BROKER_URL (a Redis that workers read); "
                              "use Client.local(settings, model=...) for a private stack")
        from sa2va_queue.cli.runner import prepare  # data dir, database migrated, broker reachable

        self.settings = settings
        self._stack = _stack
        self._store = prepare(settings)

    @classmethod
    @contextlib.contextmanager
    def local(cls, settings: Settings | None = None, *, model: str = "vesselness",
              device: str | None = None) -> Iterator["Client"]:
        """A private Redis, SQLite in the data dir and one local worker of `model`, as `sa2va-queue run`."""
        from rich.console import Console

        from sa2va_queue.cli.runner import local_stack

        settings = settings or Settings.load()
        if not settings.is_local:
            raise ConfigError("Client.local starts its own Redis: unset SA2VA_BROKER_URL, or use Client(settings)")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        with local_stack(settings, ModelSpec.parse(model), Console(stderr=True, quiet=True), device=device) as stack:
            yield cls(stack.settings, _stack=stack)

    # ---------------------------------------------------------------- producing
    def enqueue(self, items: Items, *, model: str = "vesselness", run: str | None = None,
                urgent: bool = False) -> Enqueued:
        """Store and send frames: a file, a folder (recursive, ground truth beside the images as for
        the CLI), a 2-D/3-D array (uint8 or uint16, grey or RGB), a list of these, or {name: array}.
        Files keep their names relative to the folder given; arrays are named `array-00000.png`, ...
        Re-using `run` adds only frames whose name is not yet in it."""
        spec = ModelSpec.parse(model)
        run_name = validate_run_name(run) if run else f"api-{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        frames, issues = _frames(items)
        produced: Produced = enqueue_frames(self.settings, frames, model=spec, run_name=run_name,
                                            dataset="(Python API)", urgent=urgent)
        return Enqueued(run=produced.run.name, model=str(spec), queue=produced.queue, sent=produced.sent,
                        skipped_existing=produced.skipped_existing,
                        failed_at_validation=produced.failed_at_validation,
                        issues=[f"{i.severity}: {i.file}: {i.message}; {i.action}" for i in issues])

    def wait(self, run: RunLike, *, timeout: float = 3600.0, poll_s: float = 0.2) -> dict[str, int]:
        """Block until every job of the run is final; returns the jobs per status. Raises
        WaitTimeout (the jobs stay in the database) or ServiceUnavailable (a private service died)."""
        ref = self._store.run(_name(run))
        deadline = time.monotonic() + timeout
        while True:
            counts = self._store.run_counts(ref.id)
            if all(status in _FINAL for status in counts):
                return counts
            if self._stack is not None:
                self._stack.check()  # the private Redis or worker died: say so now, not at the timeout
            if time.monotonic() > deadline:
                open_ = sum(n for s, n in counts.items() if s not in _FINAL)
                raise WaitTimeout(f"run {ref.name!r}: {open_} job(s) unfinished after {timeout:.0f} s; are workers "
                                  "serving its model (`sa2va-queue status`)? Call wait() again to go on waiting")
            time.sleep(poll_s)

    # ---------------------------------------------------------------- results
    def masks(self, run: RunLike) -> dict[str, np.ndarray]:
        """{frame name: bool mask (H, W)} for every frame of the run that has a prediction. The names
        are the ones the frames were enqueued under (they may hold patient ids: your own data)."""
        return {name: decode_mask(data, f"mask of {name}") for name, data in self._blobs(run, "mask")}

    def probabilities(self, run: RunLike) -> dict[str, np.ndarray]:
        """{frame name: float32 probability map (H, W)} where the worker stored one
        (SA2VA_STORE_PROBABILITIES)."""
        return {name: decode_probability(data).astype(np.float32) for name, data in self._blobs(run, "prob")}

    def failures(self, run: RunLike) -> dict[str, str]:
        """{frame name: reason} for every failed job of the run."""
        with self._session(run) as (_session, run_data):
            return {f.name: f.error or "failed" for f in run_data.frames if f.status == "failed"}

    def report(self, run: RunLike, *, out_dir: Path | None = None,
               formats: Sequence[str] = ("md", "html", "json")) -> dict[str, Path]:
        """Write the run's report (what `sa2va-queue report` writes); returns format -> path."""
        from sa2va_queue.core.pseudonyms import Pseudonymizer
        from sa2va_queue.db.blobs import BlobStore
        from sa2va_queue.db.session import session_scope
        from sa2va_queue.report.render import build_report

        with session_scope(self.settings.sqlalchemy_url) as session:
            return build_report(session, BlobStore(self.settings.blob_dir), _name(run),
                                pseudonymizer=Pseudonymizer.from_settings(self.settings),
                                out_dir=out_dir or self.settings.data_dir / "reports", formats=list(formats))

    # ---------------------------------------------------------------- internals
    @contextlib.contextmanager
    def _session(self, run: RunLike) -> Iterator[tuple[Any, Any]]:
        """A database session and the run's frames (report/collect.py)."""
        from sa2va_queue.core.pseudonyms import Pseudonymizer
        from sa2va_queue.db.session import session_scope
        from sa2va_queue.report.collect import load_run

        with session_scope(self.settings.sqlalchemy_url) as session:
            yield session, load_run(session, _name(run), pseudonymizer=Pseudonymizer.from_settings(self.settings))

    def _blobs(self, run: RunLike, kind: str) -> Iterator[tuple[str, bytes]]:
        from sa2va_queue.db.blobs import BlobStore

        blobs = BlobStore(self.settings.blob_dir)
        with self._session(run) as (session, run_data):
            for f in run_data.frames:
                digest = f.mask_sha256 if kind == "mask" else f.prob_sha256
                if digest is not None:
                    yield f.name, blobs.get(session, digest)


def _name(run: RunLike) -> str:
    return run.run if isinstance(run, Enqueued) else validate_run_name(run)


def _frames(items: Items) -> tuple[Iterator[Frame], list[Any]]:
    """Frames to enqueue, as a stream (a large folder is read a window at a time), and the list the
    folder scans' issues land in once the stream is consumed."""
    if isinstance(items, Mapping):
        named = list(items.items())
        if not all(isinstance(v, np.ndarray) for _, v in named):
            raise InputError("enqueue({name: ...}): the values must be numpy arrays; pass paths as a list")
    elif isinstance(items, (str, Path, np.ndarray)):
        named = [(None, items)]
    else:
        named = [(None, item) for item in items]
    arrays: list[Frame] = []
    scans: list[DatasetScan] = []
    for i, (name, item) in enumerate(named):
        if isinstance(item, np.ndarray):
            arrays.append(_array_frame(name or f"array-{i:05d}.png", item))
        elif isinstance(item, (str, Path)):
            scans.append(DatasetScan(Path(item)))  # InputError at once when the path does not exist
        else:
            raise InputError(f"item {i}: a {type(item).__name__} is neither a path nor a numpy array")
    issues: list[Any] = []

    def stream() -> Iterator[Frame]:
        yield from arrays
        for scan in scans:
            yield from scan.frames()
            issues.extend(scan.issues)  # complete once its frames are exhausted

    return stream(), issues


def _array_frame(name: str, array: np.ndarray) -> Frame:
    """An in-memory image as a PNG frame: uint8/uint16 grey (H, W), or uint8 RGB (H, W, 3)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    ok = (array.ndim == 2 and array.dtype in (np.uint8, np.uint16)) or (
        array.ndim == 3 and array.shape[2] == 3 and array.dtype == np.uint8)
    if not ok or 0 in array.shape:
        raise InputError(f"{name}: array of shape {array.shape} and dtype {array.dtype} is not an image; give "
                         "uint8 or uint16 (H, W), or uint8 (H, W, 3)")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    mode = "RGB" if array.ndim == 3 else ("I;16" if array.dtype == np.uint16 else "L")
    return Frame(name=name, path=Path(name), data=buf.getvalue(), width=int(array.shape[1]),
                 height=int(array.shape[0]), mode=mode, media_type="image/png", gt_mask=None, gt_source=None,
                 error=None)
