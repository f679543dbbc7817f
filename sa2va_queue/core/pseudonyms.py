"""Frame names: which sequence and patient a frame belongs to, and keyed pseudonyms for the patient.

Default pattern reads names like `<patient>__1-4_1_04B2D3CF_frame_000034.jpg`. A custom pattern is
a regex with a `sequence` group (and optionally `patient`); names that do not match form a sequence
of their own (the file stem), so nothing is silently merged.

Pseudonyms are HMAC-SHA256(key, patient id), 16 hex digits, with a per-deployment secret key:
without the key nobody can test guesses ("P001"?) against a pseudonym, and the same id gives the same
pseudonym in every run and report of one deployment (a different one in another). The key comes
from SA2VA_PSEUDONYM_KEY or else from `<data dir>/pseudonym.key`, created on first use with mode
0600. It is never written into a report, split file or the database. Deployments that report from
more than one machine set SA2VA_PSEUDONYM_KEY on all of them (each data dir would have its own key).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sa2va_queue.core.exceptions import ConfigError

DEFAULT_PATTERN = r"^(?P<patient>.+?)__(?P<sequence>.+)_frame_(?P<frame>\d+)$"
KEY_FILE = "pseudonym.key"
MIN_KEY_CHARS = 16


@dataclass(frozen=True)
class FrameName:
    name: str
    patient: str | None
    sequence: str  # unique across patients: includes the patient part when there is one
    frame: int | None


def parse_name(name: str, pattern: str | None = None) -> FrameName:
    stem = PurePosixPath(name).stem
    match = re.search(pattern or DEFAULT_PATTERN, stem)
    if match is None or "sequence" not in match.groupdict():
        return FrameName(name=name, patient=None, sequence=stem, frame=None)
    groups = match.groupdict()
    patient = groups.get("patient")
    sequence = f"{patient}__{groups['sequence']}" if patient else groups["sequence"]
    frame = int(groups["frame"]) if groups.get("frame") else None
    return FrameName(name=name, patient=patient, sequence=sequence, frame=frame)


class Pseudonymizer:
    """Keyed pseudonyms of patient ids and of the frame names that hold them."""

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"pseudonym key is {len(key)} bytes; give at least {MIN_KEY_CHARS} (SA2VA_PSEUDONYM_KEY)")
        self._key = bytes(key)

    def __repr__(self) -> str:  # never show the key in logs or tracebacks
        return "Pseudonymizer(<key>)"

    @classmethod
    def from_settings(cls, settings) -> "Pseudonymizer":
        """The deployment's pseudonymizer: SA2VA_PSEUDONYM_KEY, or the key file in the data dir."""
        return cls(load_key(settings.pseudonym_key, Path(settings.data_dir)))

    def pseudonym(self, patient_id: str) -> str:
        return "p-" + hmac.new(self._key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]

    def name(self, name: str, pattern: str | None = None) -> str:
        """The frame name with its patient identifier replaced by its pseudonym (patient ids are PHI)."""
        patient = parse_name(name, pattern).patient
        return name.replace(patient, self.pseudonym(patient)) if patient else name


def load_key(configured: str | None, data_dir: Path) -> bytes:
    """The configured key, or the data dir's key file (created with mode 0600 when missing)."""
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir) / KEY_FILE
    if not path.exists():
        try:
            _create_key_file(path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the pseudonym key ({exc.strerror or exc}); make the data dir "
                              "writable (SA2VA_DATA_DIR) or set SA2VA_PSEUDONYM_KEY") from None
    try:
        key = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the pseudonym key ({exc}); "
                          "fix its permissions or set SA2VA_PSEUDONYM_KEY") from None
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"{path}: the pseudonym key is empty or too short; delete the file only if no report or "
                          "split made with it must stay comparable, or set SA2VA_PSEUDONYM_KEY")
    return key.encode("ascii")


def _create_key_file(path: Path) -> None:
    """Write a new random key whole to a private temp file, then link it into place: a concurrent
    first user either wins the link or reads the winner's complete key, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
