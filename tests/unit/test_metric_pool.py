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


def test_metric_processes_run_at_the_niceness_asked_for() -> None:
    """They run below the worker's priority, so a full host still serves the threads that feed the model."""
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for nice in (0, 7):
        pool = MetricPool(1, nice=nice)
        try:
            assert pool.submit(os.getpriority, os.PRIO_PROCESS, 0).result(timeout=120) == min(19, base + nice)
        finally:
            pool.shutdown()
