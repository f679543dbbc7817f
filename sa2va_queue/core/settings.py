"""The one settings object: defaults, environment variables, CLI overrides, validated once.

Precedence: CLI flag > environment variable > default. Construct with `Settings.load(**overrides)`;
everything downstream receives the validated object, never reads the environment itself.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sa2va_queue.core.exceptions import ConfigError

DEFAULT_PROMPT = "Please segment the blood vessel."

_BROKER_SCHEMES = {"redis", "rediss", "redis+socket", "unix"}
_DB_SCHEMES = {"sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}


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
    metrics_port: int = field(default=0, metadata={"env": "SA2VA_METRICS_PORT"})  # 0: off
    flower_port: int = field(default=5555, metadata={"env": "SA2VA_FLOWER_PORT"})
    flower_user: str = field(default="admin", metadata={"env": "SA2VA_FLOWER_USER"})
    flower_password: str | None = field(default=None, metadata={"env": "SA2VA_FLOWER_PASSWORD"})

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
        if not self.prompt.strip():
            raise ConfigError("SA2VA_PROMPT is empty; give the text prompt sent with every job")

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


def redact_url(url: str) -> str:
    """The URL with its password replaced by *** (for messages)."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
