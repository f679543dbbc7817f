"""Real services: the machine's Redis (a database of its own, flushed), SQLite in tmp_path, and a
fresh PostgreSQL database per test; worker processes started for real."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Iterator

import psycopg
import pytest
import redis

from db.session import dispose_all, upgrade_schema
from sa2va_queue.settings import Settings

REDIS_URL = os.environ.get("SA2VA_TEST_REDIS_URL", "redis://127.0.0.1:6379/7")
PG_ADMIN = os.environ.get("SA2VA_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def redis_url() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()


def _pg_database() -> Iterator[str]:
    name = f"sa2va_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    yield url.replace("postgresql://", "postgresql+psycopg://")
    dispose_all()
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """The same test against SQLite and PostgreSQL, schema migrated by Alembic."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.sqlite'}"
        upgrade_schema(url)
        yield url
        dispose_all()
    else:
        gen = _pg_database()
        url = next(gen)
        upgrade_schema(url)
        yield url
        next(gen, None)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, db_url: str) -> Settings:
    return Settings.load(environ={}, data_dir=tmp_path / "data", broker_url=redis_url, database_url=db_url,
                         max_batch_size=4, max_queue_delay_ms=20)
