"""Group-aware splits: no sequence (or patient) on both sides, deterministic, no raw patient id on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sa2va_queue.core.pseudonyms import Pseudonymizer, parse_name
from sa2va_queue.producer.split import read_split, split_filter, split_names, write_split


def _names(patients: int = 10, sequences: int = 3, frames: int = 4) -> list[str]:
    return [f"PAT{p:03d}__1-4_{s}_0A0B0C{s:02X}_frame_{f:06d}.jpg"
            for p in range(patients) for s in range(sequences) for f in range(frames)]


def _sides(result, key) -> tuple[set[str], set[str]]:
    return {key(n) for n in result.train}, {key(n) for n in result.test}


def test_no_sequence_on_both_sides_and_fraction_near_target() -> None:
    names = _names()
    result = split_names(names, test=0.2, seed=3)
    train, test = _sides(result, lambda n: parse_name(n).sequence)
    assert not train & test
    assert sorted(result.train + result.test) == sorted(names)
    fraction = len(result.test) / len(names)
    assert 0.2 <= fraction <= 0.2 + 4 / len(names)  # overshoot by at most one group of 4 frames
    assert len(result.groups) == 30 and all(len(g) == 4 for g in result.groups.values())


def test_by_patient_keeps_patients_whole() -> None:
    result = split_names(_names(), by="patient", test=0.3, seed=1)
    train, test = _sides(result, lambda n: parse_name(n).patient)
    assert not train & test and train and test
    assert len(result.groups) == 10


def test_deterministic_by_seed() -> None:
    names = _names()
    assert split_names(names, seed=5) == split_names(list(reversed(names)), seed=5)
    assert any(split_names(names, seed=5).test != split_names(names, seed=s).test for s in range(6, 10))


@pytest.mark.parametrize("fraction", [0.0, 0.99])
def test_each_side_gets_a_group_when_there_are_two(fraction: float) -> None:
    result = split_names(_names(patients=1, sequences=2), test=fraction)
    assert len(result.train) == 4 and len(result.test) == 4


def test_names_outside_the_pattern_are_a_group_each() -> None:
    result = split_names(["x/a.png", "x/b.png", "y/c.png"], test=0.3, seed=0)
    assert set(result.groups) == {"a", "b", "c"} and len(result.test) == 1


def test_bad_fraction_is_refused() -> None:
    with pytest.raises(ValueError, match="test fraction"):
        split_names(_names(), test=1.5)


def test_write_split_files_hide_patient_ids(tmp_path: Path) -> None:
    names = _names(patients=4)
    result = split_names(names, test=0.25, seed=2)
    pseudo = Pseudonymizer(b"k" * 32)
    paths = write_split(result, tmp_path / "split", None, pseudonymizer=pseudo)
    assert [p.name for p in paths] == ["train.txt", "train.PHI.txt", "test.txt", "test.PHI.txt", "split.json"]
    # shareable files: pseudonyms only, the same ones a report shows
    for public, side in ((paths[0], result.train), (paths[2], result.test)):
        assert "PAT" not in public.read_text(encoding="utf-8")
        assert read_split(public) == [pseudo.name(n) for n in side]
    # raw names only in files marked as PHI, readable by their owner only
    for raw, side in ((paths[1], result.train), (paths[3], result.test)):
        assert raw.read_text(encoding="utf-8").startswith("# PHI:") and read_split(raw) == side
        assert raw.stat().st_mode & 0o077 == 0

    text = paths[4].read_text(encoding="utf-8")
    assert "PAT" not in text  # patient identifiers are PHI
    summary = json.loads(text)
    assert summary["seed"] == 2 and summary["test_fraction_requested"] == 0.25
    assert summary["frames"] == {"train": len(result.train), "test": len(result.test)}
    assert len(summary["groups"]) == 12 and all(k.startswith("p-") for k in summary["groups"])
    sides = [g["side"] for g in summary["groups"].values()]
    assert sides.count("test") == summary["groups_count"]["test"] >= 1


def test_either_split_file_selects_the_same_frames(tmp_path: Path) -> None:
    names = _names(patients=3)
    result = split_names(names, test=0.3, seed=0)
    pseudo = Pseudonymizer(b"k" * 32)
    paths = write_split(result, tmp_path, pseudonymizer=pseudo)
    for listed in (read_split(paths[2]), read_split(paths[3])):
        assert sorted(filter(split_filter(listed, pseudo), names)) == result.test
    other_key = split_filter(read_split(paths[2]), Pseudonymizer(b"z" * 32))
    assert not any(other_key(n) for n in names)  # pseudonyms of another deployment match nothing


def test_read_split_skips_blank_lines_and_comments(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("# held out\n\nseq\\a.png\n  b.png  \n", encoding="utf-8")
    assert read_split(path) == ["seq/a.png", "b.png"]
