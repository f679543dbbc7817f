"""Micro-batch formation with an injected clock (no sleeps), failure isolation, OOM halving."""

from __future__ import annotations

import queue
import threading

import pytest

from sa2va_queue.worker.batcher import MicroBatcher, OutputCountMismatch, collect_batch


class FakeClock:
    """A clock whose `get(timeout)` waits advance time instead of sleeping."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class TimedQueue(queue.Queue):
    """Queue whose blocking get advances the fake clock by the timeout when empty."""

    def __init__(self, clock: FakeClock, arrivals: dict[float, list] | None = None) -> None:
        super().__init__()
        self.clock = clock
        self.arrivals = dict(arrivals or {})

    def _deliver(self) -> None:
        for at in sorted(list(self.arrivals)):
            if at <= self.clock.t:
                for item in self.arrivals.pop(at):
                    self.put(item)

    def get(self, block=True, timeout=None):
        self._deliver()
        if self.empty() and timeout is not None:
            due = [at for at in self.arrivals if at <= self.clock.t + timeout]
            self.clock.t = min(due) if due else self.clock.t + timeout
            self._deliver()
            if self.empty():
                raise queue.Empty
        return super().get(block=False)

    def get_nowait(self):
        self._deliver()
        return super().get(block=False)


def test_takes_everything_waiting_up_to_the_limit_without_waiting():
    clock = FakeClock()
    q = TimedQueue(clock)
    for i in range(10):
        q.put(i)
    assert collect_batch(q, 4, 0.05, now=clock) == [0, 1, 2, 3]
    assert clock.t == 0.0  # a full batch never waits


def test_waits_at_most_the_delay_when_fewer_are_waiting():
    clock = FakeClock()
    q = TimedQueue(clock, arrivals={0.02: ["b"], 0.2: ["late"]})
    q.put("a")
    assert collect_batch(q, 8, 0.05, now=clock) == ["a", "b"]
    assert clock.t == pytest.approx(0.05)
    assert q.arrivals == {0.2: ["late"]}  # decided at the deadline; the late one goes to the next batch


def test_zero_delay_takes_only_what_is_already_there():
    clock = FakeClock()
    q = TimedQueue(clock, arrivals={0.001: ["b"]})
    q.put("a")
    assert collect_batch(q, 8, 0.0, now=clock) == ["a"]


def test_empty_queue_returns_empty_batch_after_block_timeout():
    clock = FakeClock()
    assert collect_batch(TimedQueue(clock), 8, 0.01, now=clock, block_timeout=0.5) == []


def _squares(batch):
    if any(x < 0 for x in batch):
        raise ValueError(f"negative input in {batch}")
    return [x * x for x in batch]


def _run_all(batcher: MicroBatcher, items):
    futures = [batcher.submit(x) for x in items]
    while batcher.run_once(block_timeout=0.0):
        pass
    return futures


def test_one_output_per_input_and_batch_info():
    batcher = MicroBatcher(_squares, max_batch_size=3, max_delay_s=0.0)
    futures = _run_all(batcher, [1, 2, 3, 4])
    results = [f.result(timeout=1) for f in futures]
    assert [r for r, _ in results] == [1, 4, 9, 16]
    assert [info["batch_size"] for _, info in results] == [3, 3, 3, 1]
    assert batcher.stats.sizes == [3, 1]


def test_a_bad_input_fails_alone_and_the_rest_of_its_batch_succeeds():
    batcher = MicroBatcher(_squares, max_batch_size=8, max_delay_s=0.0)
    futures = _run_all(batcher, [1, 2, -3, 4, 5])
    assert [f.result(timeout=1)[0] for i, f in enumerate(futures) if i != 2] == [1, 4, 16, 25]
    with pytest.raises(ValueError, match="negative"):
        futures[2].result(timeout=1)


def test_wrong_output_count_is_an_error_for_every_item_never_a_silent_drop():
    batcher = MicroBatcher(lambda batch: [0], max_batch_size=4, max_delay_s=0.0)
    futures = _run_all(batcher, [1, 2])
    assert futures[0].result(timeout=1)[0] == 0  # alone, one output is right
    assert futures[1].result(timeout=1)[0] == 0
    batcher = MicroBatcher(lambda batch: [], max_batch_size=4, max_delay_s=0.0)
    futures = _run_all(batcher, [1, 2])
    for f in futures:
        with pytest.raises(OutputCountMismatch):
            f.result(timeout=1)


class OutOfMemoryError(RuntimeError):
    pass


def test_out_of_memory_halves_the_batch_and_lowers_the_limit():
    seen = []

    def predict(batch):
        seen.append(len(batch))
        if len(batch) > 2:
            raise OutOfMemoryError("CUDA out of memory")
        return list(batch)

    batcher = MicroBatcher(predict, max_batch_size=8, max_delay_s=0.0)
    futures = _run_all(batcher, list(range(8)))
    assert [f.result(timeout=1)[0] for f in futures] == list(range(8))
    assert seen[:3] == [8, 4, 2]
    assert batcher.max_batch_size == 2
    assert batcher.stats.oom_splits >= 1


def test_threads_submitting_concurrently_are_batched_together():
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        return list(batch)

    batcher = MicroBatcher(predict, max_batch_size=16, max_delay_s=0.5)
    futures = []
    threads = [threading.Thread(target=lambda i=i: futures.append(batcher.submit(i))) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.run_once(block_timeout=1.0)
    assert sizes == [6]
    assert sorted(f.result(timeout=1)[0] for f in futures) == list(range(6))


def test_stop_answers_waiting_items_with_an_error():
    batcher = MicroBatcher(_squares, max_batch_size=2, max_delay_s=0.0)
    future = batcher.submit(3)
    batcher.stop()
    with pytest.raises(RuntimeError, match="shutting down"):
        future.result(timeout=1)
