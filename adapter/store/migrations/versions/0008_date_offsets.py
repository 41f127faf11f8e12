"""Date search in UTC and accent-insensitive string search (issue 20): the search index holds every
date range in UTC, a value written with a time zone offset converted (R4 §3.1.1.4.5 "date"), and
string values folded without accents (R4 §3.1.1.4.7 "string"). Before this revision an offset was
ignored and accents kept, so index entries of resources holding a dateTime with a non-zero offset,
or of a type with a string search parameter, are recomputed.

Revision ID: 0008
Revises: 0007
"""

import re

import orjson
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: a time followed by a non-zero offset, somewhere in a stored resource's JSON
_OFFSET = re.compile(r'T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?[+-](?!00:00)\d{2}:\d{2}"')


def upgrade() -> None:
    from adapter.search.params import PARAMS, index_entries

    strings = {t for t, ps in PARAMS.items() if any(p.type == "string" for p in ps.values())}

    bind = op.get_bind()
    insert = sa.text("INSERT INTO search_index (type, id, name, system, value, num, lo, hi)"
                     " VALUES (:type, :id, :name, :system, :value, :num, :lo, :hi)")
    remove = sa.text("DELETE FROM search_index WHERE type = :type AND id = :id")
    rows = bind.execute(sa.text("SELECT type, id, resource FROM resources WHERE deleted = :f")
                        .execution_options(yield_per=2000), {"f": False})
    todo = [(rtype, rid, text) for rtype, rid, text in rows if rtype in strings or _OFFSET.search(text)]
    for rtype, rid, text in todo:
        bind.execute(remove, {"type": rtype, "id": rid})
        batch = [{"type": rtype, "id": rid, "name": n, "system": s, "value": v, "num": num, "lo": lo, "hi": hi}
                 for n, s, v, num, lo, hi in index_entries(orjson.loads(text))]
        if batch:
            bind.execute(insert, batch)


def downgrade() -> None:
    """Nothing to undo: the UTC ranges are also valid (if stricter) ranges for the old code."""
