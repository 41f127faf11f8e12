"""Store: versioned FHIR resources in SQLite or PostgreSQL (SQLAlchemy 2, Alembic migrations)."""

from adapter.store.db import Rollback, Store, Transaction, WriteOutcome, content_hash

__all__ = ["Rollback", "Store", "Transaction", "WriteOutcome", "content_hash"]
