"""Group received instances by study; a study is due once no instance arrived for `stable_s`.

Pure bookkeeping with the clock passed in (tests never sleep); thread-safe, since the C-STORE
handlers (one thread per association) add while the flusher thread takes.
"""

from __future__ import annotations

import threading


class StudyGrouper:
    def __init__(self, stable_s: float) -> None:
        self.stable_s = stable_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, study_key: str, now: float) -> None:
        with self._lock:
            self._last[study_key] = now

    def take_due(self, now: float) -> list[str]:
        """Studies quiet for at least `stable_s`, removed from the grouper (oldest first)."""
        with self._lock:
            due = sorted((t, k) for k, t in self._last.items() if now - t >= self.stable_s)
            for _, key in due:
                del self._last[key]
            return [key for _, key in due]

    def put_back(self, study_key: str, now: float) -> None:
        """A study whose flush failed: try again after another quiet period."""
        with self._lock:
            self._last.setdefault(study_key, now)

    def waiting(self) -> int:
        with self._lock:
            return len(self._last)
