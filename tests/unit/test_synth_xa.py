"""The second synthetic generator: independent of synth, varied like real angiograms, deterministic."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import binary_dilation

import sa2va_queue.producer.synth_xa as xa
from sa2va_queue.core.imaging import decode_image, decode_mask, probe_image, to_grey
from sa2va_queue.core.pseudonyms import parse_name

SEED = 2  # its two sequences: 512 px 8-bit JPEG and 1024 px 16-bit PNG


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    return xa.generate(tmp_path_factory.mktemp("xa"), 8, seed=SEED)


def _mask(path: Path) -> np.ndarray:
    return decode_mask((path.parent / f"{path.stem}_mask.png").read_bytes(), path.name)


def test_shares_no_code_with_synth() -> None:
    tree = ast.parse(Path(xa.__file__).read_text(encoding="utf-8"))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any("synth" in name or name.startswith("sa2va_queue") for name in imported), imported


def test_names_sizes_and_bit_depths(frames: list[Path]) -> None:
    parsed = [parse_name(p.name) for p in frames]
    assert all(p.patient == "XAS0001" and p.frame is not None for p in parsed)
    assert len({p.sequence for p in parsed}) == 2
    kinds = set()
    for path in frames:
        width, height, mode, media = probe_image(path.read_bytes(), path.name)
        kinds.add((width, mode, path.suffix))
        assert width == height and _mask(path).shape == (height, width)
        assert (mode == "I;16") == (path.suffix == ".png") and media in ("image/png", "image/jpeg")
    assert kinds == {(512, "L", ".jpg"), (1024, "I;16", ".png")}


def test_every_size_and_bit_depth_occurs_across_sequences() -> None:
    styles = [xa._style(np.random.default_rng([0, 7919, s]), xa.SIZES, xa.BIT_DEPTHS) for s in range(60)]
    assert {(s.size, s.bits) for s in styles} == {(512, 8), (512, 16), (1024, 8), (1024, 16)}
    radii = [s.root_radius * 512 for s in styles]
    doses = [s.dose for s in styles]
    assert min(radii) < 3.5 and max(radii) > 5.5 and max(doses) / min(doses) > 5  # calibre and noise vary


def test_vessels_are_darker_than_their_surroundings(frames: list[Path]) -> None:
    for path in frames:
        mask = _mask(path)
        assert 0.005 < mask.mean() < 0.2
        grey = to_grey(decode_image(path.read_bytes(), path.name))
        ring = binary_dilation(mask, iterations=6) & ~binary_dilation(mask, iterations=2)
        assert grey[mask].mean() < grey[ring].mean() - 0.02, path.name


def test_catheter_is_dark_but_not_in_the_mask(frames: list[Path]) -> None:
    """The darkest thick structure near the ostium is the catheter: many very dark pixels off the mask."""
    for path in frames[:4]:
        mask = _mask(path)
        grey = to_grey(decode_image(path.read_bytes(), path.name))
        vessel_dark = np.percentile(grey[mask], 5)
        off = ~binary_dilation(mask, iterations=3)
        assert np.count_nonzero(grey[off] < vessel_dark) > 300, path.name


def test_contrast_washes_in_over_a_sequence(frames: list[Path]) -> None:
    first, last = _mask(frames[0]), _mask(frames[3])
    assert not np.array_equal(first, last)
    near = (first & binary_dilation(last, iterations=8)).sum() / first.sum()  # same tree, moved a little
    assert near > 0.9 and last.sum() >= 0.95 * first.sum()


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a = xa.generate(tmp_path / "a", 2, seed=4, sizes=(512,))
    b = xa.generate(tmp_path / "b", 2, seed=4, sizes=(512,))
    c = xa.generate(tmp_path / "c", 2, seed=5, sizes=(512,))
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "b").iterdir()) and len(names) == 4
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
    assert [p.name for p in a] == [p.name for p in b] != [p.name for p in c]
