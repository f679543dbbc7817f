"""Worker logging: Celery's and ours through one root handler, as text or as JSON lines.

Celery configures logging itself unless a receiver of `setup_logging` exists; the worker connects
`configure` so that both formats go through the same handler. JSON lines carry the `extra` fields
our code passes (job id, pseudonymised frame, model key, device) as keys of their own.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(log_format: str, level: str) -> None:
    """Root logging for a worker process: one stderr handler, text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter("[%(asctime)s: %(levelname)s/%(processName)s] %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))  # migration chatter at start
    # Celery's two INFO lines per task ("received", "succeeded in") cost the consumer thread, the
    # one thread every job passes through; Flower shows each task's life, and failures and retries
    # still log (ERROR/WARNING, ours in worker/tasks.py). --loglevel DEBUG brings them back.
    for name in ("celery.app.trace", "celery.worker.strategy"):
        logging.getLogger(name).setLevel(root.level if root.level <= logging.DEBUG else logging.WARNING)
