"""The Alembic migrations and the SQLAlchemy table definitions describe the same schema (both backends)."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from adapter.store import Store
from adapter.store.schema import metadata


def test_migrations_match_table_definitions(store: Store) -> None:
    assert store.schema_revision() == "0002"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []
