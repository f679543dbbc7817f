"""The one settings object: defaults, environment variables, CLI overrides, validated once.

Precedence: CLI flag > environment variable > default. Construct with `Settings.load(**overrides)`;
everything downstream receives the validated object, never reads the environment itself.
`apply_to_process` makes the two process-wide ones take effect (pixel limit, file mode); the CLI
calls it once at start.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from sa2va_queue.core.exceptions import ConfigError
from sa2va_queue.core.imaging import DEFAULT_MAX_PIXELS

log = logging.getLogger(__name__)

DEFAULT_PROMPT = "Please segment the blood vessel."

_BROKER_SCHEMES = {"redis", "rediss", "redis+socket", "unix"}
_DB_SCHEMES = {"sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}
_FILE_MODES = ("private", "umask")
# A batch of the slowest model we serve takes seconds (Sa2VA-26B at b=8 ~1 s on an H200, vesselness
# ~6 s at b=8 on a CPU core); a visibility timeout below queue wait + this is refused unless allowed.
BATCH_BUDGET_S = 30.0


@dataclass(frozen=True)
class Settings:
    """All settings. `env` is the environment variable that sets each one (see README)."""

    broker_url: str | None = field(default=None, metadata={"env": "SA2VA_BROKER_URL"})
    database_url: str | None = field(default=None, metadata={"env": "SA2VA_DATABASE_URL"})
    data_dir: Path = field(default=Path("sa2va-data"), metadata={"env": "SA2VA_DATA_DIR"})
    blob_dir: Path | None = field(default=None, metadata={"env": "SA2VA_BLOB_DIR"})
    prompt: str = field(default=DEFAULT_PROMPT, metadata={"env": "SA2VA_PROMPT"})
    max_batch_size: int = field(default=8, metadata={"env": "SA2VA_MAX_BATCH_SIZE"})
    max_queue_delay_ms: float = field(default=10.0, metadata={"env": "SA2VA_MAX_QUEUE_DELAY_MS"})
    max_attempts: int = field(default=3, metadata={"env": "SA2VA_MAX_ATTEMPTS"})
    visibility_timeout_s: int = field(default=3600, metadata={"env": "SA2VA_VISIBILITY_TIMEOUT_S"})
    janitor_interval_s: float = field(default=30.0, metadata={"env": "SA2VA_JANITOR_INTERVAL_S"})
    store_probabilities: bool = field(default=True, metadata={"env": "SA2VA_STORE_PROBABILITIES"})
    # torch.compile the model's hot parts in the worker's setup (sa2va on CUDA: SAM2 features, LM norms)
    compile_model: bool = field(default=False, metadata={"env": "SA2VA_COMPILE"})
    # processes computing metrics beside a worker; -1: three quarters of the cores less one (1..16); 0: inline
    metric_processes: int = field(default=-1, metadata={"env": "SA2VA_METRIC_PROCESSES"})
    # niceness added to those processes (0..19): on a host whose cores they fill, the threads that
    # decode inputs and launch the model's kernels come first
    metric_nice: int = field(default=10, metadata={"env": "SA2VA_METRIC_NICE"})
    metrics_port: int = field(default=0, metadata={"env": "SA2VA_METRICS_PORT"})  # 0: off
    flower_port: int = field(default=5555, metadata={"env": "SA2VA_FLOWER_PORT"})
    flower_user: str = field(default="admin", metadata={"env": "SA2VA_FLOWER_USER"})
    flower_password: str | None = field(default=None, metadata={"env": "SA2VA_FLOWER_PASSWORD"})
    # HMAC key of patient pseudonyms; unset: DATA_DIR/pseudonym.key, created on first use (core/pseudonyms.py)
    pseudonym_key: str | None = field(default=None, repr=False, metadata={"env": "SA2VA_PSEUDONYM_KEY"})
    max_pixels: int = field(default=DEFAULT_MAX_PIXELS, metadata={"env": "SA2VA_MAX_PIXELS"})
    metrics_host: str = field(default="127.0.0.1", metadata={"env": "SA2VA_METRICS_HOST"})
    file_mode: str = field(default="private", metadata={"env": "SA2VA_FILE_MODE"})  # private | umask
    log_format: str = field(default="text", metadata={"env": "SA2VA_LOG_FORMAT"})  # text | json (worker logs)
    allow_short_visibility_timeout: bool = field(
        default=False, metadata={"env": "SA2VA_ALLOW_SHORT_VISIBILITY_TIMEOUT"})  # fault tests only

    @classmethod
    def load(cls, environ: dict[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then the environment, then non-None `overrides`; validated."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(sorted(unknown))}")
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.metadata['env']}={value}: give a finite number")
        if self.broker_url is not None:
            _check_scheme("SA2VA_BROKER_URL", self.broker_url, _BROKER_SCHEMES)
        if self.database_url is not None:
            _check_scheme("SA2VA_DATABASE_URL", self.database_url, _DB_SCHEMES)
        if self.max_batch_size < 1:
            raise ConfigError(f"SA2VA_MAX_BATCH_SIZE must be at least 1, got {self.max_batch_size}")
        if self.max_queue_delay_ms < 0:
            raise ConfigError(f"SA2VA_MAX_QUEUE_DELAY_MS must be >= 0, got {self.max_queue_delay_ms}")
        if self.max_attempts < 1:
            raise ConfigError(f"SA2VA_MAX_ATTEMPTS must be at least 1, got {self.max_attempts}")
        if self.metric_processes < -1:
            raise ConfigError(f"SA2VA_METRIC_PROCESSES must be -1 (auto), 0 (inline) or a count, got {self.metric_processes}")
        if not 0 <= self.metric_nice <= 19:
            raise ConfigError(f"SA2VA_METRIC_NICE must be 0..19 (niceness added to the metric processes), "
                              f"got {self.metric_nice}")
        if not self.prompt.strip():
            raise ConfigError("SA2VA_PROMPT is empty; give the text prompt sent with every job")
        if self.pseudonym_key is not None and len(self.pseudonym_key) < 16:
            raise ConfigError("SA2VA_PSEUDONYM_KEY is shorter than 16 characters; give a long random secret "
                              "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)")
        if self.max_pixels < 1:
            raise ConfigError(f"SA2VA_MAX_PIXELS must be at least 1, got {self.max_pixels}")
        for name, port in (("SA2VA_METRICS_PORT", self.metrics_port), ("SA2VA_FLOWER_PORT", self.flower_port)):
            if not 0 <= port <= 65535:
                raise ConfigError(f"{name}={port}: give a TCP port between 0 and 65535")
        if not self.metrics_host.strip():
            raise ConfigError("SA2VA_METRICS_HOST is empty; give the address to listen on, e.g. 127.0.0.1")
        if self.file_mode not in _FILE_MODES:
            raise ConfigError(f"SA2VA_FILE_MODE={self.file_mode!r}: choose private (files 0600, folders 0700) "
                              "or umask (the process umask decides)")
        self._check_visibility_timeout()
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"SA2VA_LOG_FORMAT={self.log_format!r}: choose text or json")
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise ConfigError(f"SA2VA_DATA_DIR={self.data_dir} is a file, not a folder; point it at a folder "
                              "(it is created if missing)")

    def _check_visibility_timeout(self) -> None:
        """A message must stay invisible longer than its longest queue wait plus its batch, or Redis
        delivers it again while it is still running (95 deliveries for 20 jobs were seen)."""
        wait_s = self.max_queue_delay_ms / 1000.0
        needed = wait_s + BATCH_BUDGET_S
        if self.visibility_timeout_s <= wait_s or self.visibility_timeout_s < 1:
            raise ConfigError(f"SA2VA_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} is not longer than the "
                              f"queue wait SA2VA_MAX_QUEUE_DELAY_MS={self.max_queue_delay_ms:g}; every job would be "
                              f"delivered again before its batch starts: give at least {math.ceil(needed)} s")
        if self.visibility_timeout_s < needed:
            message = (f"SA2VA_VISIBILITY_TIMEOUT_S={self.visibility_timeout_s} is shorter than the queue wait "
                       f"(SA2VA_MAX_QUEUE_DELAY_MS={self.max_queue_delay_ms:g}) plus {BATCH_BUDGET_S:g} s for a batch; "
                       "jobs may be delivered again while they still run")
            if not self.allow_short_visibility_timeout:
                raise ConfigError(f"{message}: give at least {math.ceil(needed)} s, or set "
                                  "SA2VA_ALLOW_SHORT_VISIBILITY_TIMEOUT=true (fault tests)")
            log.warning("%s (allowed by SA2VA_ALLOW_SHORT_VISIBILITY_TIMEOUT)", message)

    def __repr__(self) -> str:  # never print a password: URLs redacted, the Flower password hidden
        shown = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        for key in ("broker_url", "database_url"):
            if shown[key] is not None:
                shown[key] = redact_url(shown[key])
        for secret in ("flower_password", "pseudonym_key"):
            if shown[secret] is not None:
                shown[secret] = "***"
        return f"Settings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def is_local(self) -> bool:
        """No broker configured: `run` starts a private Redis, SQLite and a worker itself."""
        return self.broker_url is None

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL SQLAlchemy gets: SQLite under the data dir unless one is configured."""
        if self.database_url is None:
            return f"sqlite:///{(self.data_dir / 'sa2va-queue.sqlite').resolve()}"
        url = self.database_url
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://"):]
        return url

    def with_(self, **changes: Any) -> "Settings":
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def to_environ(self) -> dict[str, str]:
        """Environment variables that reproduce these settings in a child process."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.metadata["env"]] = str(value).lower() if isinstance(value, bool) else str(value)
        return out


def _parse(f: dataclasses.Field, raw: str) -> Any:
    name = f.metadata["env"]
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind.startswith("Path"):
            return Path(raw).expanduser()
        if kind == "bool":
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(raw)
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.split(' ')[0]}") from None
    return raw


def _check_scheme(name: str, url: str, allowed: set[str]) -> None:
    scheme = urlsplit(url).scheme
    if scheme not in allowed:
        raise ConfigError(
            f"{name}={redact_url(url)!r}: scheme {scheme or '(none)'!r} is not supported; "
            f"use one of {', '.join(sorted(allowed))}"
        )


def apply_to_process(settings: Settings) -> None:
    """The process-wide settings, applied once by the CLI at start (children inherit both).

    * SA2VA_MAX_PIXELS: the pixel limit of every image reader (`core.imaging`).
    * SA2VA_FILE_MODE=private (default): 077 is added to the umask, so every file and folder this
      process and its children create (data dir, SQLite database and journal, Redis socket and log,
      worker logs, reports, blobs) is owner-only: 0600 files, 0700 folders. `umask` leaves the
      process umask as the user set it (e.g. `umask 027` for a group that reads the reports).
    """
    from sa2va_queue.core.imaging import set_max_pixels

    set_max_pixels(settings.max_pixels)
    if settings.file_mode == "private":
        os.umask(os.umask(0o077) | 0o077)


# query keys whose values are secrets (PostgreSQL `?password=`, tokens, keys)
_SECRET_QUERY_KEY = re.compile(r"pass|pwd|secret|token|key|auth|credential|sslpassword", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL for messages: the password in user info and secret query values replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unbalanced '[' in the host: show nothing that might be a secret
        scheme = re.match(r"[A-Za-z][A-Za-z0-9+.-]*(?=:)", url)
        return f"{scheme.group(0) if scheme else '(no scheme)'}://*** (unparseable URL)"
    netloc = parts.netloc
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = "&".join(_redact_query_item(item) for item in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_query_item(item: str) -> str:
    key, eq, _value = item.partition("=")
    return f"{key}=***" if eq and _SECRET_QUERY_KEY.search(key) else item
