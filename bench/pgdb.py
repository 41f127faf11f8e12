"""The databases a benchmark measures on: a throwaway PostgreSQL database, and an SQLite file in a
temporary folder (shared by the bench scripts)."""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text


@contextmanager
def throwaway_database(admin_url: str, prefix: str = "bench") -> Iterator[str]:
    """Create a new database next to ``admin_url``'s and yield its URL; it is dropped (WITH FORCE,
    so open connections do not keep it) when the block ends, whatever happens in it."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def database_urls(postgres: str | None, sqlite: bool = True) -> Iterator[str]:
    """Yield the URL of each database to measure on, in turn: a new SQLite file (when ``sqlite``),
    then a throwaway database on the ``postgres`` server (when given). Each is removed once the
    caller moves on to the next one (iterate to the end)."""
    if sqlite:
        with tempfile.TemporaryDirectory() as d:
            yield f"sqlite:///{d}/bench.sqlite3"
    if postgres:
        with throwaway_database(postgres) as url:
            yield url
