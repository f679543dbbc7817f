"""A model that does no work: an empty mask for every image. Measures the queue's own overhead."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from worker.backends.base import SegmentationModel, SegmentationRequest, SegmentationResult, VersionInfo


class NoopModel(SegmentationModel):
    name = "noop"

    @property
    def version(self) -> VersionInfo:
        return VersionInfo(backend=self.name, params={})

    def preprocess(self, request: SegmentationRequest) -> tuple[int, int]:
        return request.image.shape[:2]

    def predict(self, batch: Sequence[tuple[int, int]]) -> list[SegmentationResult]:
        out = []
        for h, w in batch:
            prob = np.zeros((h, w), np.float32)
            out.append(SegmentationResult(probability=prob, mask=prob > 0.5))
        return out
