"""One engine and sessionmaker per process and database URL; schema via Alembic."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from sa2va_queue.core.exceptions import ServiceUnavailable
from sa2va_queue.core.settings import redact_url

_lock = threading.Lock()
_engines: dict[str, tuple[Engine, sessionmaker[Session]]] = {}


def get_engine(url: str) -> Engine:
    return _get(url)[0]


def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return _get(url)[1]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_all() -> None:
    """Drop pooled connections (after fork, and in tests)."""
    with _lock:
        for engine, _ in _engines.values():
            engine.dispose()
        _engines.clear()


def check_database(url: str) -> None:
    """One-line ServiceUnavailable naming the setting when the database cannot be reached."""
    try:
        with get_engine(url).connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0] if str(exc) else type(exc).__name__
        raise ServiceUnavailable(
            f"database at SA2VA_DATABASE_URL={redact_url(url)} is unreachable ({reason}); "
            "start it or fix the URL"
        ) from None


# The newest migration in db/migrations/versions (a unit test holds it equal to Alembic's head).
SCHEMA_HEAD = "0006"


def schema_current(url: str) -> bool:
    """Whether the database is at SCHEMA_HEAD: one SELECT, without importing Alembic (0.3 s)."""
    try:
        with get_engine(url).connect() as conn:
            return conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == SCHEMA_HEAD
    except SQLAlchemyError:  # no alembic_version table yet: a new database
        return False


def upgrade_schema(url: str) -> None:
    """Bring the schema to the newest Alembic revision (idempotent); every command calls it, so the
    common case (already current) is one SELECT."""
    if schema_current(url):
        return
    from alembic import command
    from alembic.config import Config

    here = Path(__file__).resolve().parent
    cfg = Config()
    cfg.set_main_option("script_location", str(here / "migrations"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["engine"] = get_engine(url)
    try:
        command.upgrade(cfg, "head")
    except OperationalError as exc:
        raise ServiceUnavailable(
            f"database at SA2VA_DATABASE_URL={redact_url(url)} refused the schema upgrade ({exc.orig})"
        ) from None


def _get(url: str) -> tuple[Engine, sessionmaker[Session]]:
    with _lock:
        if url not in _engines:
            engine = _create(url)
            _engines[url] = (engine, sessionmaker(engine, expire_on_commit=False))
        return _engines[url]


def _create(url: str) -> Engine:
    if url.startswith("sqlite"):
        if "///" in url:  # a file database: its folder may not exist yet
            Path(url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:  # WAL: readers (report, status) never block writers
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # hide_parameters: a database error (logged by workers, shown by the CLI) never carries the bound
    # values, which are frame names (patient ids) and image bytes
    engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20, hide_parameters=True)

    @event.listens_for(engine, "handle_error", retval=True)
    def _without_detail(context):
        # PostgreSQL's DETAIL quotes row values ("Key (run_id, name)=(3, <patient>__...) already
        # exists"); the primary message and the constraint name are enough to act on
        orig, wrapped = context.original_exception, context.sqlalchemy_exception
        diag = getattr(orig, "diag", None)
        if wrapped is None or diag is None or not (diag.message_detail and diag.message_primary):
            return None
        orig.args = (diag.message_primary,)
        return type(wrapped)(wrapped.statement, wrapped.params, orig, hide_parameters=True,
                             connection_invalidated=wrapped.connection_invalidated, code=wrapped.code,
                             ismulti=wrapped.ismulti)

    return engine


