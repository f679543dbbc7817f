"""Throw-away PostgreSQL databases for tests and benchmarks (never used by the product itself)."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

from sa2va_queue.db.session import dispose_all


@contextmanager
def scratch_postgres(admin_url: str, prefix: str = "sa2va_scratch") -> Iterator[str]:
    """Create a database through `admin_url` (a libpq URL), yield its SQLAlchemy URL, drop it."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1) + f"/{name}"
    finally:
        dispose_all()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
