"""Flower for `sa2va-queue monitor`.

Secrets never reach argv (`ps` shows argv to every user): the broker URL travels as SA2VA_BROKER_URL
to `flower_app`, the login as FLOWER_BASIC_AUTH (Flower reads FLOWER_<OPTION> variables). History
persists in DATA_DIR/flower (Flower's persistent mode, saved every minute and on exit), and the
child stops with its parent on SIGTERM and SIGINT.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from types import FrameType

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.settings import Settings

# Columns of Flower's task list, most telling first: kwargs carry the run, the (pseudonymised) frame
# and the model, the result the outcome; args (the job id) repeat the uuid, so they are left out.
TASK_COLUMNS = "name,state,kwargs,received,runtime,worker,result,uuid"
STATE_SAVE_INTERVAL_MS = 60_000  # a crash loses at most a minute of task history


def flower_environment(settings: Settings, address: str, base: dict[str, str]) -> dict[str, str]:
    """The child's environment: `base` plus the settings and Flower's options."""
    if not settings.flower_password:
        raise ConfigError("set SA2VA_FLOWER_PASSWORD: Flower shows file names and errors, so it never runs without auth")
    if "," in settings.flower_user or "," in settings.flower_password:
        raise ConfigError("SA2VA_FLOWER_USER / SA2VA_FLOWER_PASSWORD contain a comma, which Flower reads as a "
                          "separator between logins; choose one without")
    state_dir = settings.data_dir / "flower"
    state_dir.mkdir(parents=True, exist_ok=True)
    return {
        **base,
        **settings.to_environ(),
        "FLOWER_BASIC_AUTH": f"{settings.flower_user}:{settings.flower_password}",
        "FLOWER_PORT": str(settings.flower_port),
        "FLOWER_ADDRESS": address,
        "FLOWER_PERSISTENT": "true",
        "FLOWER_DB": str((state_dir / "flower.db").resolve()),
        "FLOWER_STATE_SAVE_INTERVAL": str(STATE_SAVE_INTERVAL_MS),
        "FLOWER_TASKS_COLUMNS": TASK_COLUMNS,
    }


def run_flower(env: dict[str, str], *, grace_s: float = 20.0) -> int:
    """Run Flower until it exits; SIGTERM/SIGINT are passed on as SIGTERM (Flower then saves its state)."""
    proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "sa2va_queue.cli.flower_app", "flower"], env=env)

    def stop(_signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:  # we are leaving for another reason: never leave Flower behind
            proc.terminate()
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
