"""Frame names: which sequence and patient a frame belongs to, and how reports hide the patient.

Default pattern reads names like `<patient>__1-4_1_04B2D3CF_frame_000034.jpg`. A custom pattern is
a regex with a `sequence` group (and optionally `patient`); names that do not match form a sequence
of their own (the file stem), so nothing is silently merged.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath

DEFAULT_PATTERN = r"^(?P<patient>.+?)__(?P<sequence>.+)_frame_(?P<frame>\d+)$"


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


def hash_identifier(value: str) -> str:
    return "p-" + hashlib.sha256(value.encode("utf-8")).hexdigest()[:10]


def anonymize_name(name: str, pattern: str | None = None) -> str:
    """The name with its patient identifier replaced by a hash (patient names are PHI)."""
    parsed = parse_name(name, pattern)
    if not parsed.patient:
        return name
    return name.replace(parsed.patient, hash_identifier(parsed.patient))
