"""Bulk Data: the export_jobs table (one row per $export kick-off; adapter/bulk).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("transaction_time", sa.String(40), nullable=False),
        sa.Column("heartbeat", sa.String(40)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("progress", sa.String(200)),
        sa.Column("manifest", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("finished", sa.String(40)),
    )
    op.create_index("ix_export_jobs_status", "export_jobs", ["status"])


def downgrade() -> None:
    op.drop_table("export_jobs")
