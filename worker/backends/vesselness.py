"""Classical baseline: multi-scale Hessian vesselness (Frangi or Sato) plus a threshold.

The filter response is scaled into [0, 1] by its own high percentile so a single threshold works
across frames of different contrast; that scaled response is stored as the probability map.
Options (spec `vesselness?method=sato&sigma_min=1&sigma_max=6&threshold=0.15`) are recorded with
every prediction as the model version.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
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

class VesselnessModel(SegmentationModel):
    name = "vesselness"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        # options, defaults and their checks: sa2va_queue/core/modelspec.py
        self.params = {key: spec.value(key) for key in
                       ("method", "sigma_min", "sigma_max", "sigma_steps", "smooth", "percentile", "threshold")}
        self.method = self.params["method"]
        if not 0 < self.params["sigma_min"] <= self.params["sigma_max"]:
            raise ConfigError("vesselness needs 0 < sigma_min <= sigma_max")
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
        return [self._one(grey) for grey in batch]

    def _one(self, grey: np.ndarray) -> SegmentationResult:
        filt = frangi if self.method == "frangi" else sato
        response = filt(grey, sigmas=self.sigmas, black_ridges=True, mode="reflect")
        scale = float(np.percentile(response, self.params["percentile"]))
        prob = np.clip(response / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(response)
        return threshold_result(prob, self.params["threshold"])
