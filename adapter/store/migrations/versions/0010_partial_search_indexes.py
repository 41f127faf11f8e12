"""Ingest speed (issue 20): the date and number search indexes hold only the search index rows
that carry a date range or a number. Every row used to be in all four indexes of
``search_index``, although a token or reference row (most of them: ten of an MRD Observation's
eleven) has no ``lo``/``hi``/``num``; its entries in ``ix_search_date`` and ``ix_search_num`` were
written, never read. Date and number conditions name ``lo IS NOT NULL`` / ``num IS NOT NULL``
(adapter/store/search.py), so both SQLite ("Partial Indexes", §2.2 "Queries Using Partial
Indexes") and PostgreSQL (manual §11.8 "Partial Indexes") use them.

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_search_date", "search_index")
    op.drop_index("ix_search_num", "search_index")
    op.create_index("ix_search_date", "search_index", ["type", "name", "lo", "hi"],
                    sqlite_where=sa.text("lo IS NOT NULL"), postgresql_where=sa.text("lo IS NOT NULL"))
    op.create_index("ix_search_num", "search_index", ["type", "name", "num"],
                    sqlite_where=sa.text("num IS NOT NULL"), postgresql_where=sa.text("num IS NOT NULL"))


def downgrade() -> None:
    op.drop_index("ix_search_date", "search_index")
    op.drop_index("ix_search_num", "search_index")
    op.create_index("ix_search_date", "search_index", ["type", "name", "lo", "hi"])
    op.create_index("ix_search_num", "search_index", ["type", "name", "num"])
