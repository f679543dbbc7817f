"""Content-addressed bytes: in the database by default, or in a shared directory (SA2VA_BLOB_DIR).

Either way a worker on another machine needs nothing of the producer's file system. Rows are
inserted by the job store, a batch at a time; this class makes the rows (writing the files first
in directory mode) and reads bytes back, checking them against their sha256.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from sa2va_queue.core.exceptions import BlobCorrupted, NotFound
from sa2va_queue.db.models import Blob, utcnow


class BlobStore:
    def __init__(self, blob_dir: Path | None = None) -> None:
        self.blob_dir = blob_dir

    def rows(self, items: Sequence[tuple[bytes, str] | tuple[bytes, str, str]]) -> list[dict[str, Any]]:
        """Blob rows for (bytes, media type[, sha256]) items, files written first when a blob dir
        is set."""
        out: dict[str, dict[str, Any]] = {}
        now = utcnow()
        for item in items:
            data, media_type = item[0], item[1]
            digest = item[2] if len(item) > 2 else hashlib.sha256(data).hexdigest()
            if digest in out:
                continue
            if self.blob_dir is not None:
                self._write_file(digest, data)
            out[digest] = {"sha256": digest, "size": len(data), "media_type": media_type,
                           "data": None if self.blob_dir is not None else data, "created_at": now}
        return list(out.values())

    def read(self, digest: str, data: bytes | None) -> bytes:
        """The bytes of a blob whose row held `data` (None: they live in the blob dir), verified."""
        if data is None:
            path = self._path(digest) if self.blob_dir is not None else None
            if path is None or not path.exists():
                raise NotFound(
                    f"blob {digest[:12]} lives in the shared blob directory, which is "
                    f"{'not configured (set SA2VA_BLOB_DIR)' if path is None else f'missing {path}'}"
                )
            data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobCorrupted(f"blob {digest[:12]} corrupted: its bytes no longer match their sha256; "
                                "restore the file or re-enqueue the frame")
        return data

    def get(self, session: Session, digest: str) -> bytes:
        """Read one blob by its hash (report, export)."""
        row = session.execute(select(Blob.data).where(Blob.sha256 == digest)).first()
        if row is None:
            raise NotFound(f"blob {digest[:12]} is not in the database; was it deleted?")
        return self.read(digest, row.data)

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
