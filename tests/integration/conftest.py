"""Real services: the machine's Redis (a database of its own, flushed), SQLite in tmp_path, and a
fresh PostgreSQL database per test; worker processes started for real."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from sa2va_queue.core.settings import Settings
from tests.conftest import pg_database

@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Iterator[str]:
    """The same test against SQLite and PostgreSQL, schema migrated by Alembic."""
    from sa2va_queue.db.session import dispose_all, upgrade_schema  # not on the GPU machine, which runs model tests only

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.sqlite'}"
        upgrade_schema(url)
        yield url
        dispose_all()
    else:
        with pg_database() as url:
            upgrade_schema(url)
            yield url


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, db_url: str) -> Settings:
    return Settings.load(environ={}, data_dir=tmp_path / "data", broker_url=redis_url, database_url=db_url,
                         max_batch_size=4, max_queue_delay_ms=20)
