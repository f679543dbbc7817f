"""Where report figures are drawn: inline, or in processes started ahead of the report.

Drawing is Python under the interpreter lock (Agg rendering, PNG encoding): a report's five figures
took 3.1-3.6 s after the last job of a `run` on the 2-core VM, one after another (a case figure
about 0.7 s), plus matplotlib's import. `run` starts a FigurePool when its jobs begin, so the processes have imported matplotlib by the
time the report asks, and the figures are drawn side by side while the report's JSON and text are
written. `report` and the API draw inline (FigurePool(0)): nothing to overlap there.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Sequence

from sa2va_queue.core.processes import die_with_parent

log = logging.getLogger(__name__)

MAX_PROCESSES = 4  # a report draws at most six figures (three cases, histogram, sweep, paired Dice)
TIMEOUT_S = 300.0  # one figure; a hung process costs the report that figure, not the command


def draws_figures(formats: Sequence[str]) -> bool:
    """Whether a report in these formats has figures (Markdown and HTML do; JSON alone never)."""
    return bool({"md", "html"} & {f.lower().lstrip(".") for f in formats})


class FigurePool:
    """`draw(name, *args)` -> Future of the PNG bytes of `sa2va_queue.report.figures.<name>(*args)`."""

    def __init__(self, processes: int = 0) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        if processes > 0:
            self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_import_figures)
            for _ in range(processes):  # the executor spawns lazily: start them now, importing as they come up
                self._pool.submit(int)

    @classmethod
    def ahead(cls) -> "FigurePool":
        """A pool for a report that comes later on this host: one core left free, 2 to MAX_PROCESSES (on two
        cores, two processes drew a 64-frame report's five figures in 1.7-2.1 s, inline 3.1-3.6 s)."""
        return cls(min(MAX_PROCESSES, max(2, (os.cpu_count() or 2) - 1)))

    def draw(self, name: str, *args: Any) -> "Future[bytes]":
        if self._pool is not None:
            try:
                return self._pool.submit(draw_figure, name, *args)
            except RuntimeError as exc:  # shut down or broken: the figure is drawn here instead
                log.warning("figure processes unavailable (%s); drawing %s inline", exc, name)
        done: Future[bytes] = Future()
        try:
            done.set_result(draw_figure(name, *args))
        except Exception as exc:  # reported where the figure is collected, as from a process
            done.set_exception(exc)
        return done

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "FigurePool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def draw_figure(name: str, *args: Any) -> bytes:
    """PNG bytes of `sa2va_queue.report.figures.<name>(*args)`, in whichever process runs this."""
    from sa2va_queue.report import figures  # matplotlib: about 0.5 s of import, only where a report draws

    return getattr(figures, name)(*args)


def _import_figures() -> None:
    # a `run` killed with SIGKILL takes these with it; matplotlib loads now, not when the report asks
    die_with_parent()
    from sa2va_queue.report import figures  # noqa: F401
