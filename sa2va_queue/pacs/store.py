"""Where received instances live, written atomically before the C-STORE is acknowledged.

    <root>/studies/<study key>/<instance key>.dcm     one file per instance
    <root>/studies/<study key>/.enqueued              instance files whose frames are enqueued

Keys are hashes of the UIDs (`uid_key`), so paths, run names and logs carry no identifier. A file
is written to a temporary name in its folder, flushed to disk and renamed: a reader (or a crash)
never sees half an instance. Files not listed in `.enqueued` are pending: after a restart the
listener groups them again.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

ENQUEUED = ".enqueued"


def uid_key(uid: str) -> str:
    return hashlib.sha256(uid.encode("ascii", "replace")).hexdigest()[:16]


class InstanceStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.studies = self.root / "studies"
        self.studies.mkdir(parents=True, exist_ok=True)

    def study_dir(self, study_key: str) -> Path:
        return self.studies / study_key

    def write(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one instance atomically; raises OSError (e.g. ENOSPC) with nothing left behind."""
        folder = self.study_dir(uid_key(study_uid))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{uid_key(sop_uid)}.dcm"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def pending(self, study_key: str) -> list[Path]:
        """Instance files of the study not yet enqueued, sorted."""
        folder = self.study_dir(study_key)
        done = self._enqueued(folder)
        return sorted(p for p in folder.glob("*.dcm") if p.name not in done)

    def mark_enqueued(self, study_key: str, paths: list[Path]) -> None:
        folder = self.study_dir(study_key)
        names = self._enqueued(folder) | {p.name for p in paths}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".enqueued-")
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("".join(f"{n}\n" for n in sorted(names)))
        os.replace(tmp, folder / ENQUEUED)

    def studies_with_pending(self) -> list[str]:
        return sorted(d.name for d in self.studies.iterdir() if d.is_dir() and self.pending(d.name))

    @staticmethod
    def _enqueued(folder: Path) -> set[str]:
        marker = folder / ENQUEUED
        return set(marker.read_text(encoding="ascii").split()) if marker.exists() else set()
