"""Helpers for the DICOM tests: real dcmtk / Orthanc binaries, free ports, a listener, and an
in-process stand-in for the queue that stores one prediction per frame in SQL."""

from __future__ import annotations

import hashlib
import io
import shutil
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from sa2va_queue.core.imaging import encode_mask
from sa2va_queue.db.models import Blob, Image, Job, JobStatus, ModelVersion, Prediction, Run
from sa2va_queue.db.session import get_sessionmaker, upgrade_schema
from sa2va_queue.producer.dataset import Frame


def need(*binaries: str) -> None:
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (Debian packages dcmtk / orthanc; see .ci/services)")


def orthanc_binary() -> str:
    """Debian installs Orthanc in /usr/sbin, often not on a user's PATH."""
    found = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if found is None:
        pytest.skip("Orthanc not installed (Debian package orthanc; see .ci/services)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dcmtk(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def wait_until(predicate, timeout: float, what: str, state=lambda: "") -> None:
    """Poll `predicate` (the listener works in its own threads); on timeout fail with `state()`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} {state()}")


def migrate(url: str) -> None:
    upgrade_schema(url)


class Recorder:
    """An enqueue callable that records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Path, list[Frame]]] = []
        self.event = threading.Event()

    def __call__(self, run_name: str, folder: Path, frames) -> None:
        self.calls.append((run_name, folder, list(frames)))
        self.event.set()


class InProcessSegmenter(Recorder):
    """Stands in for queue + worker where the queue path is not under test: registers the run and
    stores, per frame, the mask 'darker than the frame's mean minus one std' as a done prediction."""

    def __init__(self, db_url: str) -> None:
        super().__init__()
        self.db_url = db_url

    def __call__(self, run_name: str, folder: Path, frames) -> None:
        frames = list(frames)
        with get_sessionmaker(self.db_url)() as session:
            mv = ModelVersion(key=uuid.uuid4().hex, backend="threshold", params={"k": 1.0}, checkpoint_hash=None,
                              code_version="test")
            run = Run(name=run_name, model_spec="threshold", dataset=str(folder), prompt="p", threshold=0.5)
            session.add_all([mv, run])
            session.flush()
            for frame in frames:
                job = Job(id=str(uuid.uuid4()), run_id=run.id, name=frame.name, prompt="p", queue="urgent",
                          status=JobStatus.failed if frame.error else JobStatus.done, attempts=1, error=frame.error)
                if frame.error is None:
                    digest = _blob(session, frame.data)
                    image = session.query(Image).filter_by(sha256=digest).one_or_none()
                    if image is None:
                        image = Image(sha256=digest, width=frame.width, height=frame.height, mode=frame.mode,
                                      media_type="image/png")
                        session.add(image)
                        session.flush()
                    job.image_id = image.id
                session.add(job)
                session.flush()
                if frame.error is None:
                    grey = np.asarray(PILImage.open(io.BytesIO(frame.data)), np.float32)
                    mask = grey < grey.mean() - grey.std()
                    session.add(Prediction(job_id=job.id, model_version_id=mv.id, threshold=0.5, batch_size=1,
                                           preprocess_ms=0.0, compute_ms=0.0,
                                           mask_sha256=_blob(session, encode_mask(mask))))
            session.commit()
        super().__call__(run_name, folder, frames)


def _blob(session, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if session.get(Blob, digest) is None:
        session.add(Blob(sha256=digest, size=len(data), media_type="image/png", data=data))
        session.flush()
    return digest
