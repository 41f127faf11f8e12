"""Hardening (issue 17): who owns each Subscription and its channel headers, kept outside the
resource (so secrets never reach reads, history, search or exports); and the content hash each
resource had when an ingestion last wrote it (so a file posted again does not silently revert a
correction made through the REST API).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription_owners",
        sa.Column("subscription_id", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("site", sa.String(32)),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("headers", sa.Text, nullable=False),
    )
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("ingested_hash", sa.String(64)))
    # the state before this revision is the baseline: what is stored counts as what was ingested
    op.execute("UPDATE resources SET ingested_hash = content_hash")


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("ingested_hash")
    op.drop_table("subscription_owners")
