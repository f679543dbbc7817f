"""The worker's metric processes come back when one dies: the task that killed it fails with
BrokenProcessPool (its job fails with that reason), and every later task runs in new processes."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

import pytest

from sa2va_queue.worker.pipeline import MetricPool


def test_a_dead_process_is_replaced_and_later_tasks_run() -> None:
    pool = MetricPool(1)
    try:
        assert pool.submit(pow, 2, 10).result(timeout=120) == 1024
        with pytest.raises(BrokenProcessPool):
            pool.submit(os._exit, 3).result(timeout=120)
        for n in range(3):  # the first of these may meet the broken pool: it is started again
            assert pool.submit(abs, -n).result(timeout=120) == n
    finally:
        pool.shutdown()
