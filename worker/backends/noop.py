"""A model that does no work: an empty mask for every image. Measures the queue's own overhead.

Options `delay_ms` (per batch) and `item_ms` (per image) make it sleep like a model whose batch
costs `delay_ms + item_ms * n`: fault tests use it to kill a worker mid-batch, and the batching
benchmark to show what micro-batching buys when a batch has a fixed cost. `maps=noise` answers
with a smooth map near 0.5 (bilinear from a random 256x256 grid, as SAM2's low-resolution logits of
random weights are), so the host work after the model (PNGs, metrics) costs what it does in the GPU
benchmarks; every frame of one size gets the same map, drawn once.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from sa2va_queue.worker.backends.base import SegmentationModel, SegmentationRequest, SegmentationResult, VersionInfo


class NoopModel(SegmentationModel):
    name = "noop"

    def __init__(self, spec) -> None:
        super().__init__(spec)
        self.delay_ms = float(spec.value("delay_ms"))
        self.item_ms = float(spec.value("item_ms"))
        self.maps = str(spec.value("maps"))
        self._noise: dict[tuple[int, int], np.ndarray] = {}

    @property
    def version(self) -> VersionInfo:
        return VersionInfo(backend=self.name, params={"delay_ms": self.delay_ms, "item_ms": self.item_ms,
                                                       "maps": self.maps})

    def preprocess(self, request: SegmentationRequest) -> tuple[int, int]:
        return request.image.shape[:2]

    def predict(self, batch: Sequence[tuple[int, int]]) -> list[SegmentationResult]:
        if self.delay_ms or self.item_ms:
            time.sleep((self.delay_ms + self.item_ms * len(batch)) / 1000.0)
        out = []
        for h, w in batch:
            prob = self._map(h, w)
            out.append(SegmentationResult(probability=prob, mask=prob > self.threshold))
        return out

    def _map(self, h: int, w: int) -> np.ndarray:
        if self.maps == "zeros":
            return np.zeros((h, w), np.float32)
        if (h, w) not in self._noise:
            rng = np.random.default_rng(0)
            grid = rng.normal(0.0, 0.6, (256, 256))
            # bilinear to (h, w), then a sigmoid: values near 0.5, about half the pixels above it
            ys, xs = np.linspace(0, 255, h), np.linspace(0, 255, w)
            y0, x0 = np.minimum(ys.astype(int), 254), np.minimum(xs.astype(int), 254)
            fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
            g = (grid[y0][:, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1][:, x0] * fy * (1 - fx)
                 + grid[y0][:, x0 + 1] * (1 - fy) * fx + grid[y0 + 1][:, x0 + 1] * fy * fx)
            self._noise[(h, w)] = (1.0 / (1.0 + np.exp(-g))).astype(np.float32)
        return self._noise[(h, w)]
