"""Synthetic angiography-like frames with exact ground truth, for tests, demos and benchmarks.

Each sequence is one or two vessel trees: main vessels fan out from an ostium and branch recursively
along smoothly curving paths, radius tapering from ~4 px (8 px wide) to 0.75 px (1.5 px wide). Its
frames deform and shift the trees a little (heart motion) and vary the contrast filling and noise.
Vessels darken the background as X-ray absorption does, intensity * exp(-k * chord length through a
round vessel), so thin distal vessels are faint. The background has smooth gradients, a vignette,
soft anatomy blobs, texture, quantum noise and a slight blur: a classical vesselness filter (Frangi)
finds most of the tree but not all of it, and some background too.

Files per frame, named like the real data (`SYN0001__1-4_1_<8 HEX>_frame_<6 digits>.jpg`; no real
patient): the JPEG (quality 92); `<stem>_mask.png`, the exact vessel mask (1-bit); LabelMe
`<stem>.json` with one outline polygon per vessel segment, as an annotator draws them (they
rasterise to the mask up to round ends and sub-pixel edges); `annotations.json` at `out` holds the
same polygons in the training format. Same seed, same bytes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from sa2va_queue.core.imaging import encode_mask

FRAMES_PER_SEQUENCE = 5
SEQUENCES_PER_PATIENT = 2
JPEG_QUALITY = 92
LABEL = "artery"
TEXT = "blood vessel"
_R_MIN = 0.75  # px: 1.5 px wide, the thinnest vessel drawn
_PATH_STEP = 0.5  # px between points of a vessel's centre-line geometry
_CATHETER_R = 2.4  # px
_OUTLINE_STEP = 4.0  # px of centre line between polygon vertices (annotators click every few px)


@dataclass
class _Tree:
    points: np.ndarray  # (M, 2) centre-line samples (x, y) in px of a 512 px frame
    radii: np.ndarray  # (M,) px
    step: np.ndarray  # (M,) px of centre line each sample stands for
    contrast: np.ndarray  # (M,) relative contrast filling (distal vessels fill less)
    starts: np.ndarray  # index of each vessel segment's first sample, plus M at the end
    catheter: np.ndarray  # (K, 2) centre line of the catheter: dark like a vessel, not in the mask


def generate(out: Path, n: int, seed: int = 0, size: int = 512) -> list[Path]:
    """Write `n` frames (JPEG) with masks and annotations under `out`; returns the JPEG paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    training: list[dict] = []
    for seq in range(-(-n // FRAMES_PER_SEQUENCE)):
        # one generator per sequence: the first sequences do not depend on n
        rng = np.random.default_rng([seed, seq])
        patient = f"SYN{seq // SEQUENCES_PER_PATIENT + 1:04d}"
        prefix = f"{patient}__1-4_1_{int(rng.integers(0, 2**32)):08X}_frame_"
        tree = _grow_tree(rng)
        background = _background(rng, size)
        k_seq = rng.uniform(0.09, 0.15)  # absorption per px of chord: the sequence's contrast
        first = int(rng.integers(0, 80))
        for k in range(min(FRAMES_PER_SEQUENCE, n - seq * FRAMES_PER_SEQUENCE)):
            stem = f"{prefix}{first + 2 * k:06d}"
            image, mask, polygons = _render_frame(rng, tree, background, k_seq, k, size)
            jpg = out / f"{stem}.jpg"
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="JPEG", quality=JPEG_QUALITY)
            jpg.write_bytes(buf.getvalue())
            (out / f"{stem}_mask.png").write_bytes(encode_mask(mask))
            (out / f"{stem}.json").write_text(json.dumps(_labelme(jpg.name, polygons, size)), encoding="utf-8")
            flat = [poly.ravel().tolist() for poly in polygons]
            training.append({"image": jpg.name, "mask": flat, "text": [TEXT] * len(flat)})
            written.append(jpg)
    (out / "annotations.json").write_text(json.dumps(training), encoding="utf-8")
    return written


# -- vessel tree ---------------------------------------------------------------------------------


def _grow_tree(rng: np.random.Generator) -> _Tree:
    """Centre-line samples of one or two branching trees in a 512 px frame."""
    parts: list[tuple[np.ndarray, ...]] = []
    n_trees = int(rng.integers(1, 3))
    catheter = np.zeros((0, 2))
    for tree in range(n_trees):
        # an ostium near the top or left edge; main vessels fan out from it
        ostium = rng.uniform([40, 30], [220, 470]) if rng.random() < 0.5 else rng.uniform([30, 40], [470, 200])
        towards = np.arctan2(256 - ostium[1], 256 - ostium[0])
        if tree == 0:  # the catheter engaged in this ostium comes in from outside the frame
            catheter, _ = _centre_line(rng, ostium, towards + np.pi + rng.normal(0, 0.4), 700.0, 1 / 400)
        n_roots = 3 if n_trees == 1 else 2
        for heading in towards + np.linspace(-0.8, 0.8, n_roots) + rng.normal(0, 0.2, n_roots):
            start = ostium + rng.normal(0, 6, 2)
            _branch(rng, start, heading, rng.uniform(3.5, 4.3), rng.uniform(300, 460), 0, parts)
    lengths = [len(p[0]) for p in parts]
    points, radii, step, contrast = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return _Tree(points, radii, step, contrast, np.concatenate([[0], np.cumsum(lengths)]), catheter[::2])


def _centre_line(rng: np.random.Generator, start: np.ndarray, heading: float, length: float,
                 bend: float = 1 / 180) -> tuple[np.ndarray, np.ndarray]:
    """(points every _PATH_STEP px, heading at each) of a smoothly curving path.

    Curvature (rad/px) is the sum of two long waves of amplitude ~`bend`: arteries bend gently over
    the heart surface, with bend radii mostly above ~100 px, so vessels do not curl into loops.
    """
    m = max(int(length / _PATH_STEP), 2)
    s = np.arange(m) * _PATH_STEP
    curvature = sum(rng.normal(0, bend) * np.sin(2 * np.pi * s / rng.uniform(120, 420) + rng.uniform(0, 6.3))
                    for _ in range(2))
    angle = heading + np.cumsum(curvature) * _PATH_STEP
    return start + np.cumsum(_PATH_STEP * np.stack([np.cos(angle), np.sin(angle)], axis=1), axis=0), angle


def _branch(rng: np.random.Generator, start: np.ndarray, heading: float, r0: float, length: float,
            depth: int, parts: list) -> None:
    pts, angle = _centre_line(rng, start, heading, length)
    m = len(pts)
    t = np.linspace(0.0, 1.0, m)
    r = np.maximum(r0 * (1.0 - (1.0 - rng.uniform(0.4, 0.6)) * t), _R_MIN)
    fill = np.clip(1.0 - 0.35 * t * rng.uniform(0.5, 1.0), 0.5, 1.0) * (0.88 ** depth)
    # keep a sample every ~r/2 px, at most 1 px: the disc union stays smooth (edge ripple < 0.04 r)
    # and the summed disc coverage (the chord, see _tubes) ripples by a few %, with half the discs
    budget = np.floor(np.cumsum(_PATH_STEP / np.clip(0.5 * r, _PATH_STEP, 1.0)))
    keep = np.flatnonzero(np.diff(budget, prepend=-1.0) > 0)
    parts.append((pts[keep], r[keep], np.diff(np.append(keep, m)) * _PATH_STEP, fill[keep]))
    if depth >= 3:
        return
    for _ in range(int(rng.integers(2, 5 - depth))):
        u = rng.uniform(0.1, 0.8)
        i = int(u * (m - 1))
        r_child = r[i] * rng.uniform(0.55, 0.85)
        if r_child < _R_MIN:
            continue
        side = 1.0 if rng.random() < 0.5 else -1.0
        _branch(rng, pts[i], angle[i] + side * rng.uniform(0.35, 1.0), r_child,
                max(length * (1.0 - u), 120.0) * rng.uniform(0.7, 1.1), depth + 1, parts)


# -- rendering -----------------------------------------------------------------------------------


def _render_frame(rng: np.random.Generator, tree: _Tree, background: np.ndarray, k_seq: float, k: int,
                  size: int) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(uint8 image, bool mask, outline polygons) of frame k of a sequence."""
    scale = size / 512.0
    moved = _deform(rng, np.concatenate([tree.points, tree.catheter]), k) * scale
    pts, catheter = moved[: len(tree.points)], moved[len(tree.points):]
    radii = tree.radii * scale
    chord, mask = _tubes(pts, radii, tree.step * scale * tree.contrast, size)
    # the catheter darkens the image like a vessel but is not one: a classic false positive
    ones = np.ones(len(catheter))
    chord += _tubes(catheter, ones * _CATHETER_R * scale, ones * scale, size)[0]
    absorb = k_seq * rng.uniform(0.8, 1.15) / scale  # contrast filling varies frame to frame
    img = background * np.exp(np.float32(-absorb) * chord)
    img += np.float32(0.03) * rng.standard_normal(img.shape, dtype=np.float32)  # quantum noise
    img = ndimage.gaussian_filter(img, 0.7 * scale)  # detector blur
    image = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    return image, mask, _outlines(pts, radii, tree.starts, size)


def _deform(rng: np.random.Generator, pts: np.ndarray, k: int) -> np.ndarray:
    """Heart motion between frames: a small rotation/scale about the centre, a shift and a smooth
    warp, following one cardiac cycle over a sequence (a few px between neighbouring frames)."""
    phase = 2 * np.pi * k / FRAMES_PER_SEQUENCE
    angle = 0.015 * np.sin(phase) + rng.normal(0, 0.003)
    zoom = 1.0 + 0.012 * np.sin(phase + 1.0)
    rot = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = np.array([3.0 * np.sin(phase), 2.0 * np.cos(phase)]) + rng.normal(0, 0.5, 2)
    warp = 2.0 * np.sin(2 * np.pi * pts[:, ::-1] / rng.uniform(250, 400) + phase)
    return (pts - 256.0) @ rot.T + 256.0 + shift + warp


def _tubes(pts: np.ndarray, radii: np.ndarray, weight: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Chord length through the vessels (px, times contrast filling) and the vessel mask.

    `weight` is each sample's centre-line step times its contrast filling. Each sample is a disc and
    the tube is their union: a pixel is vessel when its centre lies within some disc. Summing disc
    coverage times the sample step gives the chord length 2*sqrt(r^2 - d^2) through a round vessel
    (exact for a straight tube; crossings add up, as absorption does). A 1 px soft edge on the discs
    anti-aliases the image, not the mask. Work happens on a padded canvas so no window needs
    bounds checks.
    """
    touches = np.all((pts > -radii[:, None] - 1) & (pts < size + radii[:, None]), axis=1)
    pts, radii, weight = pts[touches].astype(np.float32), radii[touches].astype(np.float32), weight[touches]
    # a pixel o px from the rounded centre is >= |o| - 0.5 px from the sample: windows of half size
    # floor(r + 1) reach every pixel within the soft edge r + 0.5
    half = np.floor(radii + 1.0).astype(np.int64)
    pad = 2 * int(half.max(initial=1)) + 3
    width = size + 2 * pad
    chord = np.zeros(width * width)
    hits = np.zeros(width * width)
    centre = np.rint(pts).astype(np.int64)
    base = (centre[:, 1] + pad) * width + centre[:, 0] + pad
    frac = (centre - pts).astype(np.float32)  # window offset (0, 0) sits this far from the sample
    for h in np.unique(half):  # windows grouped by size: small ones for the many thin vessels
        sel = half == h
        oy, ox = (a.ravel() for a in np.mgrid[-h:h + 1, -h:h + 1])
        dist = np.hypot(frac[sel, 0:1] + ox.astype(np.float32), frac[sel, 1:2] + oy.astype(np.float32))
        r = radii[sel, None]
        idx = (base[sel, None] + (oy * width + ox)).ravel()
        cover = np.clip(r + 0.5 - dist, 0.0, 1.0) * weight[sel, None]
        chord += np.bincount(idx, cover.ravel(), width * width)
        hits += np.bincount(idx, (dist <= r).ravel(), width * width)
    crop = (slice(pad, pad + size), slice(pad, pad + size))
    return chord.reshape(width, width)[crop].astype(np.float32), hits.reshape(width, width)[crop] > 0


def _outlines(pts: np.ndarray, radii: np.ndarray, starts: np.ndarray, size: int) -> list[np.ndarray]:
    """One polygon per vessel segment: its centre line offset by +-r, clipped to the image."""
    first, last = starts[:-1], starts[1:] - 1
    ahead, behind = np.roll(pts, -1, axis=0), np.roll(pts, 1, axis=0)
    ahead[last], behind[first] = pts[last], pts[first]  # one-sided differences at segment ends
    tangent = ahead - behind
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    side = radii[:, None] * np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    left, right = pts + side, pts - side
    # a vertex every _OUTLINE_STEP px of centre line, plus both ends of every segment
    arc = np.cumsum(np.linalg.norm(pts - behind, axis=1))
    arc -= np.repeat(arc[first], np.diff(starts))
    pick = np.diff(np.floor(arc / _OUTLINE_STEP), prepend=-1.0) != 0
    pick[first] = pick[last] = True
    polygons = []
    for a, b in zip(first, last + 1):
        chosen = np.flatnonzero(pick[a:b]) + a
        if len(chosen) < 2:
            continue
        poly = np.concatenate([left[chosen], right[chosen[::-1]]])
        if poly.min() < -0.5 or poly.max() > size - 0.5:
            poly = _clip_to_box(poly, -0.5, size - 0.5)
        poly = np.round(poly, 2)
        x, y = poly[:, 0], poly[:, 1]
        if abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))) > 0.01:  # no zero-area sliver
            polygons.append(poly)
    return polygons


def _clip_to_box(poly: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Sutherland-Hodgman clipping of a closed polygon to the square [lo, hi]^2, one side at a time."""
    for axis, bound, keep_below in ((0, lo, False), (0, hi, True), (1, lo, False), (1, hi, True)):
        if len(poly) == 0:
            break
        nxt = np.roll(poly, -1, axis=0)
        inside = poly[:, axis] <= bound if keep_below else poly[:, axis] >= bound
        crosses = inside != np.roll(inside, -1)
        span = nxt[:, axis] - poly[:, axis]
        frac = np.divide(bound - poly[:, axis], span, out=np.zeros_like(span), where=crosses)
        cut = poly + frac[:, None] * (nxt - poly)
        # per edge: the start vertex if inside, then the crossing point if the edge leaves/enters
        both = np.stack([poly, cut], axis=1).reshape(-1, 2)
        poly = both[np.stack([inside, crosses], axis=1).ravel()]
    return poly


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Static anatomy of a sequence: gradients, vignette, soft dark blobs (spine, diaphragm), texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    tilt = rng.uniform(-1, 1, 2)
    img = 0.62 + 0.06 * _smooth_field(rng, size, 5) + 0.08 * (tilt[0] * (xx - 0.5) + tilt[1] * (yy - 0.5))
    img -= 0.36 * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2)  # image-intensifier vignette
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, 1, 2)
        ax, ay = rng.uniform(0.12, 0.4, 2)
        img -= rng.uniform(0.05, 0.14) * np.exp(-((((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2) ** 2))
    fine = ndimage.gaussian_filter(rng.standard_normal((size, size), dtype=np.float32), 1.6)
    img += 0.022 * _smooth_field(rng, size, 40) + 0.012 * fine / fine.std()
    return np.clip(img, 0.08, 0.95).astype(np.float32)


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Unit-variance-ish smooth random field with features ~size/cells px: a random cells x cells grid
    spread by Gaussian bumps along rows and columns (two small matrix products, no image filtering)."""
    centres = (np.arange(cells) + 0.5) / cells
    u = (np.arange(size) + 0.5) / size
    basis = np.exp(-(((u[:, None] - centres[None, :]) * cells) ** 2))
    basis /= basis.sum(axis=1, keepdims=True)
    field = basis @ rng.standard_normal((cells, cells)) @ basis.T
    return (field / (field.std() + 1e-6)).astype(np.float32)


def _labelme(image_name: str, polygons: list[np.ndarray], size: int) -> dict:
    return {
        "version": "5.4.1",
        "flags": {},
        "shapes": [{"label": LABEL, "points": poly.tolist(),
                    "group_id": None, "description": "", "shape_type": "polygon", "flags": {}}
                   for poly in polygons],
        "imagePath": image_name,
        "imageData": None,
        "imageHeight": size,
        "imageWidth": size,
    }
