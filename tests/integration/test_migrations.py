"""The Alembic migrations produce exactly the schema the models describe, on SQLite and PostgreSQL,
and go down and up again cleanly."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from sa2va_queue.db.models import Base
from sa2va_queue.db.session import SCHEMA_HEAD, get_engine, schema_current, upgrade_schema


def test_migrated_schema_matches_the_models(db_url):
    with get_engine(db_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_downgrade_to_nothing_and_upgrade_again(db_url):
    from pathlib import Path

    import sa2va_queue.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", db_url)
    cfg.attributes["engine"] = get_engine(db_url)
    command.downgrade(cfg, "base")
    assert set(inspect(get_engine(db_url)).get_table_names()) <= {"alembic_version"}
    upgrade_schema(db_url)
    assert {"runs", "jobs", "predictions", "metrics", "dead_letters"} <= set(inspect(get_engine(db_url)).get_table_names())


def test_the_fast_current_check_knows_alembics_head(db_url):
    """upgrade_schema skips Alembic when the database is at SCHEMA_HEAD: that constant must be the
    newest migration, and a database one step behind must still be upgraded."""
    from pathlib import Path

    from alembic.script import ScriptDirectory

    import sa2va_queue.db as db

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).parent / "migrations"))
    cfg.set_main_option("sqlalchemy.url", db_url)
    cfg.attributes["engine"] = get_engine(db_url)
    assert ScriptDirectory.from_config(cfg).get_current_head() == SCHEMA_HEAD
    assert schema_current(db_url)
    command.downgrade(cfg, "-1")
    assert not schema_current(db_url)
    upgrade_schema(db_url)
    assert schema_current(db_url)
    with get_engine(db_url).connect() as conn:
        assert not compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
