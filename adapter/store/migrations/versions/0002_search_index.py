"""Search: the search_index table, and resources.created (for stable paging).

Revision ID: 0002
Revises: 0001
"""

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("resources", sa.Column("created", sa.String(40)))
    op.create_table(
        "search_index",
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("system", sa.String(255)),
        sa.Column("value", sa.String(255)),
        sa.Column("num", sa.Float),
        sa.Column("lo", sa.String(32)),
        sa.Column("hi", sa.String(32)),
    )
    op.create_index("ix_search_value", "search_index", ["type", "name", "value"])
    op.create_index("ix_search_date", "search_index", ["type", "name", "lo", "hi"])
    op.create_index("ix_search_num", "search_index", ["type", "name", "num"])
    op.create_index("ix_search_resource", "search_index", ["type", "id"])
    # backfill: creation time from the history, index entries from the stored JSON
    bind = op.get_bind()
    bind.execute(sa.text("UPDATE resources SET created = (SELECT MIN(h.last_updated) FROM resource_history h"
                         " WHERE h.type = resources.type AND h.id = resources.id)"))
    from adapter.search.params import index_entries

    insert = sa.text("INSERT INTO search_index (type, id, name, system, value, num, lo, hi)"
                     " VALUES (:type, :id, :name, :system, :value, :num, :lo, :hi)")
    rows = bind.execute(sa.text("SELECT type, id, resource FROM resources WHERE deleted = :f"), {"f": False}).all()
    batch = []
    for rtype, rid, text in rows:
        for name, system, value, num, lo, hi in index_entries(orjson.loads(text)):
            batch.append({"type": rtype, "id": rid, "name": name, "system": system, "value": value, "num": num,
                          "lo": lo, "hi": hi})
    if batch:
        bind.execute(insert, batch)


def downgrade() -> None:
    op.drop_table("search_index")
    op.drop_column("resources", "created")
