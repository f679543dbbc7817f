"""Synthetic angiography: deterministic, named like real data, ground truth that is sensible but not trivial."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation
from skimage.filters import frangi

from sa2va_queue.producer.annotations import fit_to_image, parse_labelme, parse_training
from sa2va_queue.producer.dataset import scan_dataset
from sa2va_queue.core.pseudonyms import parse_name
from sa2va_queue.producer.rasterize import rasterize_polygons
from sa2va_queue.producer.synth import generate
from sa2va_queue.core.imaging import decode_image, decode_mask, probe_image, to_grey


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("synth")
    return out, generate(out, 12, seed=1)


def _mask(jpg: Path) -> np.ndarray:
    return decode_mask((jpg.parent / f"{jpg.stem}_mask.png").read_bytes(), jpg.name)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def test_names_parse_into_sequences_of_several_patients(synth: tuple[Path, list[Path]]) -> None:
    _, paths = synth
    assert len(paths) == 12
    parsed = [parse_name(p.name) for p in paths]
    assert all(p.frame is not None and p.patient and p.patient.startswith("SYN") for p in parsed)
    sequences = {p.sequence for p in parsed}
    assert len(sequences) == 3 and len({p.patient for p in parsed}) == 2
    assert sorted(sum(p.sequence == s for p in parsed) for s in sequences) == [2, 5, 5]
    assert all(probe_image(p.read_bytes(), p.name)[:2] == (512, 512) and p.suffix == ".jpg" for p in paths)


def test_masks_are_plausible_vessel_trees(synth: tuple[Path, list[Path]]) -> None:
    _, paths = synth
    fractions = []
    for jpg in paths:
        mask = _mask(jpg)
        grey = to_grey(decode_image(jpg.read_bytes(), jpg.name))
        fractions.append(mask.mean())
        assert grey[mask].mean() < grey[~mask].mean() - 0.05  # vessels are darker than background
    assert all(0.03 < f < 0.2 for f in fractions) and 0.05 < np.mean(fractions) < 0.15


def test_frames_of_a_sequence_move_but_stay_alike(synth: tuple[Path, list[Path]]) -> None:
    _, paths = synth
    first, second, other = _mask(paths[0]), _mask(paths[1]), _mask(paths[5])

    def near(a: np.ndarray, b: np.ndarray) -> float:  # share of a within 8 px of b
        return float((a & binary_dilation(b, iterations=8)).sum() / a.sum())

    assert not np.array_equal(first, second)  # the heart moved
    assert near(first, second) > 0.9 and near(first, other) < 0.6  # same tree, a few px away


def test_labelme_and_training_polygons_agree_with_the_mask(synth: tuple[Path, list[Path]]) -> None:
    out, paths = synth
    training, issues = parse_training(json.loads((out / "annotations.json").read_text()), "annotations.json")
    assert issues == [] and [a.image for a in training] == [p.name for p in paths]
    for jpg, entry in zip(paths, training):
        mask = _mask(jpg)
        ann, issues = parse_labelme(json.loads(jpg.with_suffix(".json").read_text()), jpg.name)
        polygons, fit_issues = fit_to_image(ann, 512, 512)
        assert issues == [] and fit_issues == [] and ann.declared_size == (512, 512)
        assert _iou(rasterize_polygons(polygons, mask.shape), mask) > 0.9
        assert _iou(rasterize_polygons(entry.polygons, mask.shape), mask) > 0.9


def test_scan_of_synthetic_data_is_clean(synth: tuple[Path, list[Path]]) -> None:
    out, paths = synth
    result = scan_dataset(out)
    assert [f.name for f in result.frames] == sorted(p.name for p in paths)
    assert all(f.error is None and f.gt_mask is not None for f in result.frames)
    assert {i.severity for i in result.issues} == {"info"}  # only "also found" notes


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", 3, seed=4)
    b = generate(tmp_path / "b", 3, seed=4)
    files_a = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files_a == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(files_a) == 3 * 3 + 1
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in files_a)
    c = generate(tmp_path / "c", 3, seed=5)
    assert [p.name for p in a] == [p.name for p in b] != [p.name for p in c]


def test_frangi_baseline_is_good_but_not_perfect(synth: tuple[Path, list[Path]]) -> None:
    """Threshold (as a share of pixels) tuned on one frame, applied to another sequence: Dice in (0.45, 0.9)."""
    _, paths = synth
    responses, masks = [], []
    for jpg in (paths[0], paths[7]):
        grey = to_grey(decode_image(jpg.read_bytes(), jpg.name))
        responses.append(frangi(grey, sigmas=(1, 2, 3), black_ridges=True))
        masks.append(_mask(jpg))
    quantiles = np.linspace(0.8, 0.99, 39)
    best = max(quantiles, key=lambda q: _dice(responses[0] > np.quantile(responses[0], q), masks[0]))
    dice = _dice(responses[1] > np.quantile(responses[1], best), masks[1])
    assert 0.45 < dice < 0.9, dice
