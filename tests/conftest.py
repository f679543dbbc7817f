"""Markers come from the folder a test lives in (unit / integration / e2e); GPU tests skip without CUDA."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

REACH = ("unit", "integration", "e2e")

REDIS_URL = os.environ.get("SA2VA_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
PG_ADMIN = os.environ.get("SA2VA_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


# Service clients are imported inside the fixtures: the GPU machine runs the model tests without them.


@pytest.fixture
def redis_url() -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database, dropped afterwards."""
    from sa2va_queue.db.scratch import scratch_postgres

    with scratch_postgres(PG_ADMIN) as url:
        yield url


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
