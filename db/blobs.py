"""Content-addressed bytes: in the database by default, or in a shared directory (SA2VA_BLOB_DIR).

Either way a worker on another machine needs nothing of the producer's file system.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from sa2va_queue.db.models import Blob
from sa2va_queue.core.exceptions import NotFound
from sa2va_queue.core.imaging import sha256


class BlobStore:
    def __init__(self, blob_dir: Path | None = None) -> None:
        self.blob_dir = blob_dir

    def put(self, session: Session, data: bytes, media_type: str) -> str:
        """Store bytes once; returns their sha256. Safe to call twice with the same bytes."""
        digest = sha256(data)
        if session.get(Blob, digest) is not None:
            return digest
        if self.blob_dir is not None:
            self._write_file(digest, data)
        try:  # another worker may store the same bytes (an empty mask, say) at the same moment
            with session.begin_nested():
                session.add(Blob(sha256=digest, size=len(data), media_type=media_type,
                                 data=None if self.blob_dir is not None else data))
        except IntegrityError:
            pass
        return digest

    def get(self, session: Session, digest: str) -> bytes:
        row = session.execute(select(Blob.data).where(Blob.sha256 == digest)).first()
        if row is None:
            raise NotFound(f"blob {digest[:12]} is not in the database; was it deleted?")
        if row.data is not None:
            return row.data
        path = self._path(digest)
        if self.blob_dir is None or not path.exists():
            raise NotFound(
                f"blob {digest[:12]} lives in the shared blob directory, which is "
                f"{'not configured (set SA2VA_BLOB_DIR)' if self.blob_dir is None else f'missing {path}'}"
            )
        return path.read_bytes()

    def _path(self, digest: str) -> Path:
        assert self.blob_dir is not None
        return self.blob_dir / digest[:2] / digest

    def _write_file(self, digest: str, data: bytes) -> None:
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)  # atomic: readers never see half a blob
