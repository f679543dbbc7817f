"""Dynamic micro-batching in front of one model.

Job threads call `MicroBatcher.submit(item)` and wait on the returned future. One batch thread owns
the model: when the model is free it takes what is waiting (up to `max_batch_size`) and, only if
fewer are waiting, waits at most `max_delay_s` for more. The batch is decided at that moment.

One output per input, always: a batch whose `predict` raises is split in halves and retried down to
single items, so one bad input fails alone; a CUDA out-of-memory error additionally lowers this
worker's batch limit to the size that last succeeded.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Generic, Sequence, TypeVar

log = logging.getLogger(__name__)

In = TypeVar("In")
Out = TypeVar("Out")

Clock = Callable[[], float]


def collect_batch(
    q: "queue.Queue[In]",
    max_batch_size: int,
    max_delay_s: float,
    *,
    now: Clock = time.monotonic,
    block_timeout: float | None = None,
) -> list[In]:
    """Items for one batch: blocks for the first item (up to `block_timeout`), then takes what is
    waiting; waits until `now() + max_delay_s` for more only while the batch is not full."""
    try:
        first = q.get(timeout=block_timeout)
    except queue.Empty:
        return []
    batch = [first]
    deadline = now() + max_delay_s
    while len(batch) < max_batch_size:
        try:
            batch.append(q.get_nowait())
            continue
        except queue.Empty:
            pass
        remaining = deadline - now()
        if remaining <= 0:
            break
        try:
            batch.append(q.get(timeout=remaining))
        except queue.Empty:
            break
    return batch


def is_out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "OutOfMemoryError" or "out of memory" in str(exc).lower()


class OutputCountMismatch(RuntimeError):
    pass


@dataclass
class BatchStats:
    """What the last batches looked like; read by metrics and the job that waited in them."""

    batches: int = 0
    items: int = 0
    oom_splits: int = 0
    sizes: list[int] = field(default_factory=list)


@dataclass
class _Pending(Generic[In, Out]):
    item: In
    future: "Future[tuple[Out, dict[str, float]]]"


class MicroBatcher(Generic[In, Out]):
    """Feeds `predict(list[In]) -> list[Out]` micro-batches from many submitting threads."""

    def __init__(
        self,
        predict: Callable[[Sequence[In]], list[Out]],
        *,
        max_batch_size: int = 8,
        max_delay_s: float = 0.01,
        now: Clock = time.monotonic,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self._now = now
        self._on_batch = on_batch
        self._queue: queue.Queue[_Pending[In, Out]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.stats = BatchStats()

    def start(self) -> "MicroBatcher[In, Out]":
        self._thread = threading.Thread(target=self._loop, name="micro-batcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batch in flight; items still waiting get an error (their jobs are retried)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        while True:
            try:
                pending = self._queue.get_nowait()
            except queue.Empty:
                break
            pending.future.set_exception(RuntimeError("worker shutting down before this job ran"))

    def submit(self, item: In) -> "Future[tuple[Out, dict[str, float]]]":
        """Future of (output, info) where info has batch_size and compute_ms of its batch."""
        if self._stop.is_set():
            raise RuntimeError("micro-batcher is stopped")
        future: Future[tuple[Out, dict[str, float]]] = Future()
        self._queue.put(_Pending(item, future))
        return future

    def run_once(self, block_timeout: float | None = 0.1) -> int:
        """Form and run one batch (the loop's body; tests call it directly). Returns its size."""
        batch = collect_batch(
            self._queue, self.max_batch_size, self.max_delay_s, now=self._now, block_timeout=block_timeout
        )
        if batch:
            self._run(batch)
        return len(batch)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # never let the batch thread die: every future is answered in _run
                log.exception("micro-batcher loop error")

    def _run(self, batch: list[_Pending[In, Out]]) -> None:
        start = self._now()
        try:
            outputs = self._predict([p.item for p in batch])
            if len(outputs) != len(batch):
                raise OutputCountMismatch(
                    f"model returned {len(outputs)} outputs for a batch of {len(batch)}"
                )
        except Exception as exc:  # split to isolate the failing input(s)
            if is_out_of_memory(exc) and len(batch) > 1:
                self.stats.oom_splits += 1
                self.max_batch_size = max(1, len(batch) // 2)
                log.warning("out of memory at batch %d; batch limit now %d", len(batch), self.max_batch_size)
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
                return
            half = len(batch) // 2
            self._run(batch[:half])
            self._run(batch[half:])
            return
        elapsed_ms = (self._now() - start) * 1000.0
        self.stats.batches += 1
        self.stats.items += len(batch)
        self.stats.sizes.append(len(batch))
        del self.stats.sizes[:-1000]
        if self._on_batch is not None:
            self._on_batch(len(batch), elapsed_ms)
        info = {"batch_size": float(len(batch)), "compute_ms": elapsed_ms}
        for pending, output in zip(batch, outputs):
            pending.future.set_result((output, info))
