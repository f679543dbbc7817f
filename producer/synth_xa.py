"""A second synthetic angiography generator ("xa"), written apart from synth.py on purpose.

A default chosen on one generator and checked on the same generator proves little; this one shares
no code with `synth` and varies what real X-ray angiograms vary in, so that a default chosen on one
and reported on the other says something about transfer (bench/cross_generator.py):

- Vessel trees: coronary-like trunks (straight LAD-like or C-shaped RCA-like) from one ostium, side
  branches whose calibre follows Murray's law (r_parent^3 = r_trunk^3 + r_branch^3), centre lines
  as cubic splines through randomly turning control points. Root calibre varies per sequence
  (radius 2.5-6.5 px at 512 px), the thinnest vessel drawn is 0.6 px in radius.
- Background, as attenuation: heart shadow, lungs with fine pulmonary markings, ribs (arcs with a
  cortical rim), spine with vertebral bodies, the diaphragm dome, image-intensifier vignetting and,
  sometimes, collimator blades.
- Catheter (radius 2.5-4 px, strongly opaque) from the frame edge to the ostium; sometimes ECG lead
  wires. Neither is in the mask.
- Contrast: the bolus front washes in over a sequence, so early frames show part of the tree; only
  filled vessels are in the mask (an annotator marks what is visible). Density varies per frame.
- Detector: Poisson noise at a dose drawn per sequence, Gaussian blur, then either a 16-bit PNG of
  linear detector counts (12-bit range, windowed by the decoder) or an 8-bit JPEG of the log image
  with a random window and gamma. Frames are 512 or 1024 px; vessel sizes scale with the frame.

Geometry lives in frame-relative units (1.0 = frame width); tubes are rendered on a 2x supersampled
grid from a Euclidean distance transform of the rasterised centre lines (radius and filling carried
to every pixel by the transform's nearest-centre indices), one layer per branching depth so a thin
branch never carves a notch into its parent. Chord length through a round vessel,
2 sqrt(r^2 - d^2), times the filling gives its absorption. The mask is "at least half of the
pixel's supersamples lie inside a filled vessel".

Files, named like the real data: `XAS0001__1-4_1_<8 HEX>_frame_<6 digits>.jpg` (8-bit) or `.png`
(16-bit) and `<stem>_mask.png`. No polygons: this generator is for measuring, not for the
annotation parsers. Same seed, same bytes.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.interpolate import make_interp_spline
from scipy.special import expit

FRAMES_PER_SEQUENCE = 4
SEQUENCES_PER_PATIENT = 2
SUPERSAMPLE = 2
R_MIN = 0.6 / 512  # thinnest vessel radius, frame-relative
SIZES = (512, 1024)
BIT_DEPTHS = (8, 16)
_MAX_DEPTH = 3


@dataclass(frozen=True)
class Style:
    """What one sequence looks like: everything drawn once per sequence."""

    size: int
    bits: int
    root_radius: float  # frame-relative
    mu: float  # absorption per frame-relative chord unit at full filling
    dose: float  # detected quanta per pixel at full transmission
    blur: float  # detector blur sigma, px at 512 (scaled with the frame)
    jpeg_quality: int
    gamma: float


@dataclass
class Vessels:
    """Centre-line samples of a sequence's tree (frame-relative), before per-frame motion."""

    points: np.ndarray  # (M, 2) x, y
    radius: np.ndarray  # (M,)
    depth: np.ndarray  # (M,) branching depth: 0 trunk
    path: np.ndarray  # (M,) distance from the ostium along the tree, frame-relative


def generate(out: Path, n: int, seed: int = 0, sizes: tuple[int, ...] = SIZES,
             bit_depths: tuple[int, ...] = BIT_DEPTHS) -> list[Path]:
    """Write `n` frames and their `<stem>_mask.png` under `out`; returns the image paths.

    Each sequence draws its size from `sizes` and its bit depth from `bit_depths`.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for seq in range(-(-n // FRAMES_PER_SEQUENCE)):
        rng = np.random.default_rng([seed, 7919, seq])  # one stream per sequence: prefixes do not depend on n
        style = _style(rng, sizes, bit_depths)
        patient = f"XAS{seq // SEQUENCES_PER_PATIENT + 1:04d}"
        stem0 = f"{patient}__1-{seq % SEQUENCES_PER_PATIENT + 3}_1_{int(rng.integers(0, 2**32)):08X}_frame_"
        vessels = _tree(rng, style)
        ostium = vessels.points[0]
        devices = _devices(rng, ostium)
        background = _background(rng, style.size)
        first = int(rng.integers(0, 60))
        front0 = rng.uniform(0.5, 1.0)  # how far the bolus has reached in the first frame
        for k in range(min(FRAMES_PER_SEQUENCE, n - seq * FRAMES_PER_SEQUENCE)):
            front = min(1.0, front0 + k * rng.uniform(0.15, 0.35))
            image, mask = _frame(rng, style, vessels, devices, background, k, front)
            stem = f"{stem0}{first + 3 * k:06d}"
            path = out / f"{stem}.{'png' if style.bits == 16 else 'jpg'}"
            path.write_bytes(_encode(image, style))
            (out / f"{stem}_mask.png").write_bytes(_png(Image.fromarray(mask)))
            written.append(path)
    return written


def _style(rng: np.random.Generator, sizes: tuple[int, ...], bit_depths: tuple[int, ...]) -> Style:
    return Style(
        size=int(rng.choice(sizes)),
        bits=int(rng.choice(bit_depths)),
        root_radius=rng.uniform(2.5, 6.5) / 512,
        mu=rng.uniform(0.035, 0.075) * 512,
        dose=float(np.exp(rng.uniform(np.log(250), np.log(4000)))),
        blur=rng.uniform(0.4, 1.3),
        jpeg_quality=int(rng.integers(75, 96)),
        gamma=rng.uniform(0.8, 1.25),
    )


# -- geometry -----------------------------------------------------------------------------------


def _tree(rng: np.random.Generator, style: Style) -> Vessels:
    """Two or three trunks from one ostium, branching by Murray's law down to R_MIN."""
    left = rng.random() < 0.5
    ostium = np.array([rng.uniform(0.12, 0.35) if left else rng.uniform(0.65, 0.88), rng.uniform(0.12, 0.35)])
    towards_centre = np.arctan2(0.6 - ostium[1], 0.5 - ostium[0])
    parts: list[tuple[np.ndarray, ...]] = []
    n_trunks = int(rng.integers(2, 5))
    for i, heading in enumerate(towards_centre + np.linspace(-1.1, 1.1, n_trunks) + rng.normal(0, 0.25, n_trunks)):
        r0 = style.root_radius * (1.0 if i == 0 else rng.uniform(0.7, 0.95))
        # turn per control point (~0.08 apart): C-shaped (RCA-like, ~1-2 rad in all) or nearly straight
        curl = rng.choice([-1, 1]) * rng.uniform(0.08, 0.18) if rng.random() < 0.4 else rng.normal(0, 0.05)
        _vessel(rng, ostium, heading, r0, rng.uniform(0.65, 1.1), curl, 0, 0.0, parts)
    points, radius, depth, path = (np.concatenate([p[i] for p in parts]) for i in range(4))
    return Vessels(points, radius, depth.astype(np.int8), path)


def _spline(rng: np.random.Generator, start: np.ndarray, heading: float, length: float, curl: float,
            wiggle: float, step: float) -> tuple[np.ndarray, np.ndarray]:
    """(samples every `step`, unit tangents) of a cubic spline through turning control points."""
    n_ctrl = max(4, int(length / 0.08) + 2)
    turns = curl + rng.normal(0, wiggle, n_ctrl - 1)
    angles = heading + np.concatenate([[0.0], np.cumsum(turns)])
    seg = length / (n_ctrl - 1)
    steps = seg * np.stack([np.cos(angles[1:]), np.sin(angles[1:])], 1)
    ctrl = start + np.concatenate([[[0.0, 0.0]], np.cumsum(steps, 0)])
    t = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ctrl, axis=0), axis=1))])
    spline = make_interp_spline(t, ctrl, k=3)
    s = np.arange(0.0, t[-1], step)
    pts = spline(s)
    tangent = spline.derivative()(s)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    return pts, tangent


def _vessel(rng: np.random.Generator, start: np.ndarray, heading: float, r0: float, length: float, curl: float,
            depth: int, path0: float, parts: list) -> None:
    step = 0.25 / 1024  # a quarter of a supersampled pixel of a 1024 px frame
    pts, tangent = _spline(rng, start, heading, length, curl / max(1, depth + 1), 0.22, step)
    m = len(pts)
    if m < 8:
        return
    radius = np.full(m, r0)
    radius *= np.linspace(1.0, rng.uniform(0.7, 0.9), m)  # gentle taper along the vessel
    n_side = int(rng.integers(*((4, 9), (2, 5), (1, 3), (0, 1))[depth]))
    spots = np.sort(rng.uniform(0.08, 0.85, n_side))
    children = []
    for u in spots:
        i = int(u * (m - 1))
        keep = rng.uniform(0.86, 0.97)  # trunk radius ratio after the branch
        r_parent = radius[i]
        r_child = r_parent * (1.0 - keep**3) ** (1.0 / 3.0)  # Murray's law
        radius[i:] *= keep
        if r_child >= R_MIN and depth < _MAX_DEPTH:
            side = rng.choice([-1.0, 1.0])
            angle = np.arctan2(tangent[i, 1], tangent[i, 0]) + side * rng.uniform(0.45, 1.2)
            children.append((pts[i], angle, r_child, (1.0 - u) * length * rng.uniform(0.4, 0.9), path0 + u * length))
    alive = radius >= R_MIN
    if not alive.all():  # the vessel ends where it gets too thin to see
        end = int(np.argmin(alive))
        pts, radius = pts[:end], radius[:end]
        m = end
    inside = np.all((pts > -0.05) & (pts < 1.05), axis=1)
    if m >= 8:
        path = path0 + np.arange(m)[inside] * step
        parts.append((pts[inside], radius[inside], np.full(int(inside.sum()), depth), path))
    for p, angle, r, length_c, path_c in children:
        _vessel(rng, p, angle, r, max(length_c, 0.08), rng.normal(0, 0.06), depth + 1, path_c, parts)


@dataclass
class Devices:
    catheter: np.ndarray  # (K, 2) centre line
    catheter_radius: float
    wires: list[np.ndarray]  # ECG leads / sternal wires: thin opaque curves


def _devices(rng: np.random.Generator, ostium: np.ndarray) -> Devices:
    # the catheter comes up from the lower edge (femoral) or in from a side (radial) to the ostium
    if rng.random() < 0.6:
        entry = np.array([rng.uniform(0.3, 0.8), 1.08])
    else:
        entry = np.array([rng.choice([-0.08, 1.08]), rng.uniform(0.3, 0.8)])
    direct = ostium - entry
    heading = np.arctan2(direct[1], direct[0])
    length = float(np.linalg.norm(direct))
    pts, _ = _spline(rng, entry, heading - 0.25, length * 1.05, 0.5 / max(4, int(length / 0.08) + 2), 0.05, 0.25 / 1024)
    near = np.argmin(np.linalg.norm(pts - ostium, axis=1))  # stop at the ostium
    wires = []
    for _ in range(int(rng.binomial(2, 0.25))):
        a = rng.uniform(0, 1, 2)
        w, _ = _spline(rng, a, rng.uniform(0, 2 * np.pi), rng.uniform(0.4, 0.9), rng.normal(0, 0.2), 0.1, 0.5 / 1024)
        wires.append(w)
    return Devices(pts[: near + 1], rng.uniform(2.5, 4.0) / 512, wires)


def _moved(pts: np.ndarray, rng: np.random.Generator, k: int) -> np.ndarray:
    """Heart motion of frame k: rotation, scale and shift about the heart centre plus a smooth warp."""
    phase = 2 * np.pi * k / FRAMES_PER_SEQUENCE + rng.normal(0, 0.2)
    a = 0.03 * np.sin(phase)
    zoom = 1.0 + 0.025 * np.cos(phase)
    rot = zoom * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    centre = np.array([0.5, 0.55])
    shift = 0.006 * np.array([np.cos(phase), np.sin(phase)])
    warp = 0.004 * np.sin(2 * np.pi * pts[:, ::-1] * 1.7 + phase)
    return (pts - centre) @ rot.T + centre + shift + warp


# -- rendering ----------------------------------------------------------------------------------


def _frame(rng: np.random.Generator, style: Style, vessels: Vessels, devices: Devices, background: np.ndarray,
           k: int, front: float) -> tuple[np.ndarray, np.ndarray]:
    """(detector image in [0, 1] (float), bool mask) of frame k."""
    size = style.size
    big = size * SUPERSAMPLE
    motion_seed = int(rng.integers(0, 2**31))
    pts = _moved(vessels.points, np.random.default_rng(motion_seed), k)
    fill = np.clip((front * vessels.path.max() - vessels.path) / 0.06, 0.0, 1.0)  # bolus front, soft
    fill *= rng.uniform(0.75, 1.15)  # density of this frame's contrast
    visible = fill > 0.3
    chord = np.zeros((big, big), np.float32)
    inside = np.zeros((big, big), bool)
    for depth in range(_MAX_DEPTH + 1):
        sel = (vessels.depth == depth) & (fill > 0.02)
        c, ins = _tubes(pts[sel] * big, vessels.radius[sel] * big, fill[sel], visible[sel], big)
        chord += c
        inside |= ins
    cath_pts = _moved(devices.catheter, np.random.default_rng(motion_seed), k)
    n_c = len(cath_pts)
    device_chord = _opaque(cath_pts * big, devices.catheter_radius * big, big)
    for wire in devices.wires:
        device_chord += _opaque(wire * big, 0.9 / 512 * big, big)
    # absorption: chords are in supersampled px; mu is per frame-relative unit
    absorb = style.mu * (chord / big) + 3.0 * style.mu * (device_chord / big)
    transmission = _downsample(np.exp(-absorb))
    mask = _downsample(inside.astype(np.float32)) >= 0.5
    signal = background * transmission
    counts = rng.poisson(signal * style.dose).astype(np.float32) / np.float32(style.dose)
    image = ndimage.gaussian_filter(counts, style.blur * size / 512)
    return image, mask


def _tubes(centres: np.ndarray, radii: np.ndarray, fill: np.ndarray, visible: np.ndarray,
           big: int) -> tuple[np.ndarray, np.ndarray]:
    """(chord length times filling, inside a visible vessel) on the supersampled grid.

    Centre-line samples are rasterised to their nearest pixel (the widest sample wins a pixel); the
    distance transform then gives every pixel its distance d to the nearest centre pixel and that
    sample's radius r: chord 2 sqrt(r^2 - d^2) where d < r.
    """
    chord = np.zeros((big, big), np.float32)
    inside = np.zeros((big, big), bool)
    ij = np.rint(centres[:, ::-1]).astype(np.int64)
    ok = np.all((ij >= 0) & (ij < big), axis=1)
    if not ok.any():
        return chord, inside
    ij, radii, fill, visible = ij[ok], radii[ok], fill[ok], visible[ok]
    order = np.argsort(radii, kind="stable")  # later writes win: widest sample per pixel
    r_map = np.zeros((big, big), np.float32)
    f_map = np.zeros((big, big), np.float32)
    v_map = np.zeros((big, big), bool)
    r_map[ij[order, 0], ij[order, 1]] = radii[order]
    f_map[ij[order, 0], ij[order, 1]] = fill[order]
    v_map[ij[order, 0], ij[order, 1]] = visible[order]
    # only pixels within reach of the widest vessel matter: transform a bounding box, not the frame
    reach = int(np.ceil(radii.max())) + 2
    lo = np.maximum(ij.min(axis=0) - reach, 0)
    hi = np.minimum(ij.max(axis=0) + reach + 1, big)
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]))
    dist, (ii, jj) = ndimage.distance_transform_edt(r_map[box] == 0, return_indices=True)
    r = r_map[box][ii, jj]
    half = np.sqrt(np.maximum(r * r - (dist * dist).astype(np.float32), 0.0))
    chord[box] = 2.0 * half * f_map[box][ii, jj]
    inside[box] = (dist <= r) & v_map[box][ii, jj]
    return chord, inside


def _opaque(centres: np.ndarray, radius: float, big: int) -> np.ndarray:
    """Chord length through a device of constant radius (fully opaque filling, never in the mask)."""
    n = len(centres)
    return _tubes(centres, np.full(n, radius), np.ones(n), np.zeros(n, bool), big)[0]


def _downsample(a: np.ndarray) -> np.ndarray:
    n = a.shape[0] // SUPERSAMPLE
    return a.reshape(n, SUPERSAMPLE, n, SUPERSAMPLE).mean(axis=(1, 3)).astype(np.float32)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Transmission of the static anatomy in (0, 1]: exp(-attenuation of heart, lungs, bones, ...)."""
    v, u = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    att = np.full((size, size), rng.uniform(0.5, 0.9), np.float32)
    # heart shadow: a large soft ellipse; lungs: less attenuation around it, with fine markings
    cx, cy, ax, ay = rng.uniform(0.4, 0.6), rng.uniform(0.5, 0.65), rng.uniform(0.3, 0.45), rng.uniform(0.3, 0.45)
    heart = expit((1.0 - (((u - cx) / ax) ** 2 + ((v - cy) / ay) ** 2)) / 0.25)
    att += rng.uniform(0.25, 0.6) * heart
    lung = (1.0 - heart) * (v < 0.8)
    # pulmonary markings: thin wiggly lines along the zero crossings of a smooth random field
    white = rng.standard_normal((size, size)).astype(np.float32)
    field = ndimage.gaussian_filter(white, rng.uniform(6, 12) * size / 512)
    field /= field.std() + 1e-6
    markings = np.exp(-((field / rng.uniform(0.06, 0.12)) ** 2))
    att += lung * (-0.2 + rng.uniform(0.03, 0.08) * markings)
    # ribs: parabolic arcs with a denser cortical rim
    n_ribs = int(rng.integers(3, 8))
    tilt, bend = rng.uniform(-0.3, 0.3), rng.uniform(0.3, 1.2)
    width = rng.uniform(0.025, 0.04)
    for y0 in np.sort(rng.uniform(-0.1, 1.0, n_ribs)):
        t = (v - (y0 + tilt * (u - 0.5) + bend * (u - rng.uniform(0.2, 0.8)) ** 2)) / width
        band = np.clip(1.0 - t * t, 0.0, 1.0)
        att += rng.uniform(0.08, 0.2) * (np.sqrt(band) + 0.6 * (band > 0) * np.abs(t) ** 6)
    # spine: a vertical band of vertebral bodies (denser blocks, lighter discs between)
    sx, sw = rng.uniform(0.1, 0.9), rng.uniform(0.08, 0.14)
    across = np.clip(1.0 - ((u - sx - 0.05 * (v - 0.5)) / sw) ** 2, 0.0, 1.0)
    period = rng.uniform(0.1, 0.16)
    bodies = 0.75 + 0.25 * np.cos(2 * np.pi * (v / period + rng.uniform(0, 1)))
    att += rng.uniform(0.3, 0.7) * np.sqrt(across) * bodies
    # diaphragm: a dense dome low in the frame with a soft edge
    d0, curve = rng.uniform(0.7, 1.05), rng.uniform(0.4, 1.5)
    edge = v - (d0 + curve * (u - rng.uniform(0.3, 0.7)) ** 2)
    att += rng.uniform(0.4, 0.9) * expit(edge / rng.uniform(0.008, 0.03))
    # collimator blade on one side, sometimes
    if rng.random() < 0.3:
        side = int(rng.integers(0, 4))
        coord = (u, 1 - u, v, 1 - v)[side]
        att += 1.5 * expit((rng.uniform(0.03, 0.12) - coord) / 0.003)
    # image-intensifier vignetting
    vignette = rng.uniform(0.15, 0.35) * ((u - 0.5) ** 2 + (v - 0.5) ** 2)
    return np.exp(-(att + vignette)).astype(np.float32) * np.float32(rng.uniform(0.7, 1.0)) / np.float32(np.exp(-0.5))


# -- output -------------------------------------------------------------------------------------


def _encode(image: np.ndarray, style: Style) -> bytes:
    """16 bit: linear detector counts in a 12-bit range. 8 bit: log image, random window and gamma, JPEG."""
    if style.bits == 16:
        counts = np.clip(np.rint(64 + image * 3000.0), 0, 4095).astype(np.uint16)
        return _png(Image.fromarray(counts))
    log = np.log(np.maximum(image, 1e-3))
    lo, hi = np.percentile(log, [0.5, 99.5])
    disp = np.clip((log - lo) / max(hi - lo, 1e-6), 0.0, 1.0) ** style.gamma
    buf = io.BytesIO()
    Image.fromarray(np.rint(15 + disp * 225).astype(np.uint8)).save(buf, format="JPEG", quality=style.jpeg_quality)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
