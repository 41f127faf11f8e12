"""Alembic environment: runs against the connection or URL handed over by adapter.store.db."""

from alembic import context
from sqlalchemy import create_engine

from adapter.store.schema import metadata

config = context.config
connectable = config.attributes.get("connection")
if connectable is None:
    connectable = create_engine(config.get_main_option("sqlalchemy.url"))
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connectable, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
