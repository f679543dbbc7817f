"""Backend registry: model name -> the module and class that implement it (imported on demand)."""

from __future__ import annotations

import importlib

from sa2va_queue.exceptions import UnknownModel
from worker.backends.base import ModelSpec, SegmentationModel

# Imported lazily so a vesselness worker never imports torch/transformers.
BACKENDS: dict[str, tuple[str, str]] = {
    "vesselness": ("worker.backends.vesselness", "VesselnessModel"),
    "noop": ("worker.backends.noop", "NoopModel"),
    "sa2va": ("worker.backends.sa2va.backend", "Sa2VAModel"),
}


def build_model(spec: ModelSpec | str) -> SegmentationModel:
    """Construct (not set up) the backend a spec names; UnknownModel lists the known names."""
    if isinstance(spec, str):
        spec = ModelSpec.parse(spec)
    if spec.name not in BACKENDS:
        raise UnknownModel(
            f"unknown model {spec.name!r}; known models: {', '.join(sorted(BACKENDS))} "
            "(spec format NAME[:PATH][?key=value&...])"
        )
    module_name, class_name = BACKENDS[spec.name]
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(spec)
