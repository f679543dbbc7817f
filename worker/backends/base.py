"""The one model interface. The batcher and the worker never know which backend they serve.

A backend is built from a `ModelSpec`, loads its weights once in `setup`, turns each request into
model input in `preprocess` (runs in the job's own thread, so it overlaps the previous batch), and
answers a whole batch in `predict`: exactly one `SegmentationResult` per input, in order.
Requests carry the image and the prompt only: the ground truth never reaches a backend.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import numpy as np

from sa2va_queue.core.modelspec import ModelSpec


@dataclass(frozen=True)
class SegmentationRequest:
    """What a backend is allowed to see of a job."""

    job_id: str
    image: np.ndarray  # uint8 RGB (H, W, 3)
    prompt: str


@dataclass
class SegmentationResult:
    probability: np.ndarray  # float32 (H, W) in [0, 1]
    mask: np.ndarray  # bool (H, W)
    text: str | None = None  # the language model's answer, where there is one
    no_segmentation: bool = False  # the model gave no [SEG]: the mask is empty by definition


@dataclass(frozen=True)
class VersionInfo:
    backend: str
    params: dict[str, Any]
    checkpoint_hash: str | None = None


class SegmentationModel(abc.ABC):
    """Subclass, set `name`, implement `version`, `preprocess` and `predict`."""

    name: ClassVar[str]
    threshold: float = 0.5  # probability above which a pixel is vessel; recorded with each prediction

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    def setup(self, device: str = "cpu", *, compile: bool = False) -> None:
        """Load weights once per process. `device` is 'cpu', 'cuda', or 'auto' for a device map.
        `compile`: compile what the backend can (torch.compile) before the first batch; a runtime
        choice that must not change the output beyond floating-point rounding."""

    @property
    @abc.abstractmethod
    def version(self) -> VersionInfo:
        """Everything that decides the output: recorded as a model version with each prediction."""

    def preprocess(self, request: SegmentationRequest) -> Any:
        """Per-job CPU work (tiling, normalisation). Raise InputError to fail this job alone."""
        return request

    @abc.abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[SegmentationResult]:
        """One result per preprocessed input, in order."""


def threshold_result(prob: np.ndarray, threshold: float, text: str | None = None) -> SegmentationResult:
    prob = np.asarray(prob, dtype=np.float32)
    return SegmentationResult(probability=prob, mask=prob > threshold, text=text)
