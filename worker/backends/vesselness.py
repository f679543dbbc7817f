"""Classical baseline: multi-scale Hessian vesselness (Frangi or Sato) with a per-image cut.

A fixed threshold on the raw response does not carry over between images of different contrast,
noise or vessel calibre, so the cut is set per image from the response itself: with P the
response's `percentile` (99th by default),

- rule=hysteresis (default): a pixel is vessel when its response exceeds `low` * P and its
  connected component (above `low` * P) holds a pixel above `high` * P. Isolated noise and
  background ridges rarely reach `high`; faint vessels attached to strong ones are kept.
- rule=percentile: every pixel above `low` * P (the rule before hysteresis).

The cut is folded into the stored probability so the worker's one contract holds, mask =
probability > threshold, with 0.5 standing for the per-image cut:

    probability = 0.5 * response / (low * P)    in components that reach high * P (all, rule=percentile)
    probability = 0.5 * response / (high * P)   elsewhere (never above 0.5 there: no pixel reaches high * P)

clipped to [0, 1]. A threshold t other than 0.5 scales both cuts by 2t: the threshold sweep and a
calibration then tune one factor on top of the per-image rule. Options (spec
`vesselness?method=sato&low=0.15&threshold=0.45`) are recorded with every prediction as the model
version; their checks are in sa2va_queue/core/modelspec.py, the per-method defaults of `low` and
`high` in DEFAULT_CUTS below.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import frangi, gaussian, sato

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.imaging import to_grey
from sa2va_queue.worker.backends.base import (
    SegmentationModel,
    SegmentationRequest,
    SegmentationResult,
    VersionInfo,
    threshold_result,
)

PARAMS = ("method", "sigma_min", "sigma_max", "sigma_steps", "smooth", "percentile", "rule", "low", "high", "threshold")
# (low, high) per method when the spec gives none: each chosen on the `synth` generator and reported
# on the independent `xa` one (bench/cross_generator.py; table in the README). Sato's response is
# broader than Frangi's, so the same fractions of its 99th percentile would keep most of the frame.
DEFAULT_CUTS = {"frangi": (0.03, 0.8), "sato": (0.2, 0.8)}


class VesselnessModel(SegmentationModel):
    name = "vesselness"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        # options, defaults and their checks: sa2va_queue/core/modelspec.py
        self.params = {key: spec.value(key) for key in PARAMS}
        self.method = self.params["method"]
        low, high = DEFAULT_CUTS[self.method]
        self.params["low"] = spec.value("low", low)
        self.params["high"] = spec.value("high", high)
        if not 0 < self.params["sigma_min"] <= self.params["sigma_max"]:
            raise ConfigError(f"model spec {spec}: vesselness needs 0 < sigma_min <= sigma_max")
        if self.params["rule"] == "hysteresis" and self.params["high"] < self.params["low"]:
            raise ConfigError(f"model spec {spec}: hysteresis needs low <= high; raise high or lower low")
        self.sigmas = np.linspace(self.params["sigma_min"], self.params["sigma_max"], self.params["sigma_steps"])

    @property
    def version(self) -> VersionInfo:
        return VersionInfo(backend=self.name, params=dict(self.params))

    @property
    def threshold(self) -> float:
        return self.params["threshold"]

    def preprocess(self, request: SegmentationRequest) -> np.ndarray:
        grey = to_grey(request.image)
        if self.params["smooth"] > 0:
            grey = gaussian(grey, sigma=self.params["smooth"], preserve_range=True)
        return grey

    def predict(self, batch: Sequence[np.ndarray]) -> list[SegmentationResult]:
        return [self.result(self.response(grey)) for grey in batch]

    def response(self, grey: np.ndarray) -> np.ndarray:
        """The raw filter response (dark ridges) of a preprocessed image."""
        filt = frangi if self.method == "frangi" else sato
        return filt(grey, sigmas=self.sigmas, black_ridges=True, mode="reflect").astype(np.float32)

    def result(self, response: np.ndarray) -> SegmentationResult:
        """Probability (per-image cut folded in, see the module docstring) and mask = prob > threshold."""
        return threshold_result(self.probability(response), self.params["threshold"])

    def probability(self, response: np.ndarray) -> np.ndarray:
        scale = float(np.percentile(response, self.params["percentile"]))
        if not scale > 0:
            return np.zeros(response.shape, np.float32)
        low_cut = self.params["low"] * scale
        prob = 0.5 * response / np.float32(low_cut)
        if self.params["rule"] == "hysteresis":
            high_cut = self.params["high"] * scale
            prob = np.where(_seeded(response, low_cut, high_cut), prob, 0.5 * response / np.float32(high_cut))
        return np.clip(prob, 0.0, 1.0).astype(np.float32)


def _seeded(response: np.ndarray, low_cut: float, high_cut: float) -> np.ndarray:
    """Pixels above low_cut whose 8-connected component holds a pixel above high_cut."""
    labels, n = ndimage.label(response > low_cut, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(response.shape, bool)
    strong = np.zeros(n + 1, bool)
    strong[np.unique(labels[response > high_cut])] = True
    strong[0] = False
    return strong[labels]
