"""Train/test splits that never put frames of one sequence (or patient) on both sides.

Frames of one cine sequence are near-duplicates; a random per-frame split leaks the test set into
training and inflates every score (the data this is for was only ever scored on training frames).
Groups come from `sa2va_queue.core.pseudonyms.parse_name`; names a pattern does not match are a group each.

Patient identifiers are PHI. `train.txt`, `test.txt` and `split.json` hold pseudonymised names
(keyed, see core/pseudonyms.py: the same names the reports show); the raw file names, which a scan
needs to find the files, go only to `train.PHI.txt` and `test.PHI.txt`, whose first line says so.
Either kind works as a split file: `split_filter` matches a frame by its raw or pseudonymised name.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from sa2va_queue.core.exceptions import InputError
from sa2va_queue.core.pseudonyms import Pseudonymizer, parse_name

GroupBy = Literal["sequence", "patient"]


@dataclass
class SplitResult:
    train: list[str]
    test: list[str]
    groups: dict[str, list[str]]  # group name -> its frame names (sorted)
    by: GroupBy = "sequence"
    seed: int = 0
    requested: float = 0.2  # the test fraction asked for; the achieved one is len(test) / total


def split_names(names: list[str], *, by: GroupBy = "sequence", pattern: str | None = None,
                test: float = 0.2, seed: int = 0) -> SplitResult:
    """Whole groups go to test, in an order shuffled by `seed`, until the test frame fraction
    reaches `test`; with two or more groups each side gets at least one."""
    if not 0.0 <= test <= 1.0:
        raise ValueError(f"test fraction must lie in [0, 1], got {test}")
    if by not in ("sequence", "patient"):
        raise ValueError(f"by must be 'sequence' or 'patient', got {by!r}")
    groups: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):  # drop repeats, keep order
        groups.setdefault(_group_of(name, by, pattern), []).append(name)
    groups = {key: sorted(members) for key, members in sorted(groups.items())}
    order = [list(groups)[i] for i in np.random.default_rng(seed).permutation(len(groups))]

    total = sum(len(m) for m in groups.values())
    test_groups: list[str] = []
    count = 0
    for key in order:
        if total == 0 or count / total >= test:
            break
        test_groups.append(key)
        count += len(groups[key])
    if len(groups) >= 2:
        if not test_groups:
            test_groups = order[:1]
        elif len(test_groups) == len(groups):
            test_groups = test_groups[:-1]
    in_test = set(test_groups)
    return SplitResult(
        train=sorted(n for k, m in groups.items() if k not in in_test for n in m),
        test=sorted(n for k in in_test for n in groups[k]),
        groups=groups, by=by, seed=seed, requested=test,
    )


PHI_HEADER = "# PHI: raw file names that contain patient identifiers. Do not share; share {public} instead.\n"


def write_split(result: SplitResult, out_dir: Path, pattern: str | None = None, *,
                pseudonymizer: Pseudonymizer) -> list[Path]:
    """Write train.txt, test.txt (pseudonymised names, one per line), split.json (counts and
    pseudonymised groups) and train.PHI.txt, test.PHI.txt (raw names, marked as PHI)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for side, names in (("train", result.train), ("test", result.test)):
        public, raw = out_dir / f"{side}.txt", out_dir / f"{side}.PHI.txt"
        public.write_text("".join(f"{pseudonymizer.name(n, pattern)}\n" for n in names), encoding="utf-8")
        raw.write_text(PHI_HEADER.format(public=public.name) + "".join(f"{n}\n" for n in names), encoding="utf-8")
        os.chmod(raw, 0o600)
        paths += [public, raw]
    split_json = out_dir / "split.json"
    in_test = set(result.test)
    groups = {}
    for key, members in result.groups.items():
        groups[_anonymize_group(key, members[0], pattern, pseudonymizer)] = {
            "side": "test" if members[0] in in_test else "train",
            "frames": [pseudonymizer.name(n, pattern) for n in members],
        }
    total = len(result.train) + len(result.test)
    summary = {
        "by": result.by,
        "seed": result.seed,
        "test_fraction_requested": result.requested,
        "test_fraction": round(len(result.test) / total, 4) if total else 0.0,
        "frames": {"train": len(result.train), "test": len(result.test)},
        "groups_count": {side: sum(g["side"] == side for g in groups.values()) for side in ("train", "test")},
        "groups": groups,
    }
    split_json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return paths + [split_json]


def read_split(path: Path) -> list[str]:
    """Names from a train.txt/test.txt: one per line; blank lines and `#` comments skipped."""
    names = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read the split file ({exc}); give a train.txt/test.txt as written by "
                         "`sa2va-queue split` (UTF-8, one frame name a line)") from None
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.append(PurePosixPath(line.replace("\\", "/")).as_posix())
    return names


def split_filter(entries: list[str], pseudonymizer: Pseudonymizer, pattern: str | None = None):
    """A predicate on raw frame names: listed in `entries` by raw or by pseudonymised name."""
    listed = set(entries)
    return lambda name: name in listed or pseudonymizer.name(name, pattern) in listed


def _group_of(name: str, by: GroupBy, pattern: str | None) -> str:
    parsed = parse_name(name, pattern)
    if by == "patient" and parsed.patient:
        return parsed.patient
    return parsed.sequence  # no patient in the name: the sequence is the finest safe group


def _anonymize_group(key: str, member: str, pattern: str | None, pseudonymizer: Pseudonymizer) -> str:
    patient = parse_name(member, pattern).patient
    return key.replace(patient, pseudonymizer.pseudonym(patient)) if patient else key
