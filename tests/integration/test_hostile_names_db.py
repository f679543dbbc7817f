"""Issue 8: file names that are not UTF-8 (or hold control characters) stopped a run with
UnicodeEncodeError on SQLite and PostgreSQL. The scan now refuses such a frame; what it hands on
(the frame's name and its failure reason) is stored by both real databases."""

from __future__ import annotations

import io
import os
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sa2va_queue.producer.dataset import scan_dataset
from tests.conftest import pg_database


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def hostile_folder(tmp_path: Path) -> Path:
    root = tmp_path / "frames"
    root.mkdir()
    (root / "good.png").write_bytes(_png(1))
    for i, raw in enumerate((b"latin1_\xe9t\xe9.png", b"half_\xf0\x9f.png", b"tab\tnul\x01.png")):
        with open(os.path.join(os.fsencode(root), raw), "wb") as fh:
            fh.write(_png(10 + i))
    return root


def _rows(root: Path) -> list[tuple[str, str | None]]:
    result = scan_dataset(root)
    assert len(result.frames) == 4
    refused = [f for f in result.frames if f.name != "good.png"]
    assert all(f.error and ("not valid UTF-8" in f.error) for f in refused)
    return [(f.name, f.error) for f in result.frames]


def test_refused_names_store_in_postgresql(hostile_folder):
    import psycopg

    rows = _rows(hostile_folder)
    with pg_database() as url:
        libpq = url.replace("postgresql+psycopg://", "postgresql://", 1)
        with psycopg.connect(libpq) as conn:
            conn.execute("CREATE TABLE frames (name varchar(1024) UNIQUE, error text)")
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO frames VALUES (%s, %s)", rows)
            stored = conn.execute("SELECT name FROM frames ORDER BY name").fetchall()
            assert sorted(n for (n,) in stored) == sorted(n for n, _ in rows)
            with pytest.raises(UnicodeEncodeError):  # what the scan handed on before: the raw name
                conn.execute("INSERT INTO frames VALUES (%s, NULL)", (os.fsdecode(b"latin1_\xe9t\xe9.png"),))


def test_refused_names_store_in_sqlite(hostile_folder, tmp_path):
    rows = _rows(hostile_folder)
    with sqlite3.connect(tmp_path / "t.sqlite") as db:
        db.execute("CREATE TABLE frames (name TEXT UNIQUE, error TEXT)")
        db.executemany("INSERT INTO frames VALUES (?, ?)", rows)
        assert db.execute("SELECT count(*) FROM frames").fetchone() == (4,)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_database_errors_never_carry_frame_names(backend, tmp_path):
    """A database error reaches worker logs and CLI messages: its text must not hold the bound values
    (frame names hold patient ids)."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    from sa2va_queue.db.session import get_engine

    def check(url: str) -> None:
        with get_engine(url).begin() as conn:
            conn.execute(text("CREATE TABLE frames (name varchar(200) UNIQUE)"))
        with pytest.raises(IntegrityError) as info:
            with get_engine(url).begin() as conn:
                for _ in range(2):
                    conn.execute(text("INSERT INTO frames VALUES (:n)"), {"n": "PATIENT0042__seq_frame_000001.jpg"})
        assert "PATIENT0042" not in str(info.value) and "parameters hidden" in str(info.value)

    if backend == "sqlite":
        check(f"sqlite:///{tmp_path / 'e.sqlite'}")
    else:
        with pg_database() as url:
            check(url)
