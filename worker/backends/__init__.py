"""Backend registry: model name -> the module and class that implement it (imported on demand)."""

from __future__ import annotations

import importlib

from sa2va_queue.core.modelspec import ModelSpec
from sa2va_queue.worker.backends.base import SegmentationModel

# Imported lazily so a vesselness worker never imports torch/transformers.
BACKENDS: dict[str, tuple[str, str]] = {
    "vesselness": ("sa2va_queue.worker.backends.vesselness", "VesselnessModel"),
    "noop": ("sa2va_queue.worker.backends.noop", "NoopModel"),
    "sa2va": ("sa2va_queue.worker.backends.sa2va.backend", "Sa2VAModel"),
}


def build_model(spec: ModelSpec | str) -> SegmentationModel:
    """Construct (not set up) the backend a spec names; UnknownModel lists the known names."""
    spec = ModelSpec.parse(spec)  # unknown names and options fail here, before any import
    module_name, class_name = BACKENDS[spec.name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)
