"""Markers come from the folder a test lives in (unit / integration / e2e); GPU tests skip without CUDA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REACH = ("unit", "integration", "e2e")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu = _has_cuda()
    for item in items:
        parts = Path(str(item.fspath)).parts
        for reach in REACH:
            if reach in parts:
                item.add_marker(getattr(pytest.mark, reach))
        if "gpu" in item.keywords and not gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine)"))


def _has_cuda() -> bool:
    if os.environ.get("CI") == "true":
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False
