"""A model that does no work: an empty mask for every image. Measures the queue's own overhead.

Options `delay_ms` (per batch) and `item_ms` (per image) make it sleep like a model whose batch
costs `delay_ms + item_ms * n`: fault tests use it to kill a worker mid-batch, and the batching
benchmark to show what micro-batching buys when a batch has a fixed cost.
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

    @property
    def version(self) -> VersionInfo:
        return VersionInfo(backend=self.name, params={"delay_ms": self.delay_ms, "item_ms": self.item_ms})

    def preprocess(self, request: SegmentationRequest) -> tuple[int, int]:
        return request.image.shape[:2]

    def predict(self, batch: Sequence[tuple[int, int]]) -> list[SegmentationResult]:
        if self.delay_ms or self.item_ms:
            time.sleep((self.delay_ms + self.item_ms * len(batch)) / 1000.0)
        out = []
        for h, w in batch:
            prob = np.zeros((h, w), np.float32)
            out.append(SegmentationResult(probability=prob, mask=prob > self.threshold))
        return out
