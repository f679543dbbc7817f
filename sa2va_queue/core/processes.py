"""Child processes that end with their parent (Linux), so a killed worker or `run` leaves nothing behind."""

from __future__ import annotations

import signal


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when the thread that started it exits
    (PR_SET_PDEATHSIG). Call it first thing in the child: a preexec_fn or a pool initializer.
    A no-op where prctl is missing (not Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
