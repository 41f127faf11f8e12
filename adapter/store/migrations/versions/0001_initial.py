"""Initial schema: resources, resource_history, ingestions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("last_updated", sa.String(40), nullable=False),
        sa.Column("site", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(64)),
        sa.Column("code_system", sa.String(255)),
        sa.Column("code", sa.String(128)),
        sa.Column("effective", sa.String(40)),
        sa.Column("status", sa.String(32)),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("deleted", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("resource", sa.Text, nullable=False),
    )
    op.create_index("ix_resources_site_type", "resources", ["site", "type"])
    op.create_index("ix_resources_patient", "resources", ["patient_id"])
    op.create_index("ix_resources_code", "resources", ["type", "code"])
    op.create_index("ix_resources_last_updated", "resources", ["last_updated"])
    op.create_table(
        "resource_history",
        sa.Column("type", sa.String(64), primary_key=True),
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("version_id", sa.Integer, primary_key=True),
        sa.Column("last_updated", sa.String(40), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("resource", sa.Text, nullable=False),
    )
    op.create_table(
        "ingestions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("site", sa.String(32), nullable=False),
        sa.Column("mapping", sa.String(64), nullable=False),
        sa.Column("file_name", sa.String(255), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("started", sa.String(40), nullable=False),
        sa.Column("rows_read", sa.Integer, nullable=False),
        sa.Column("rows_mapped", sa.Integer, nullable=False),
        sa.Column("rows_rejected", sa.Integer, nullable=False),
        sa.Column("report", sa.Text, nullable=False),
    )
    op.create_index("ix_ingestions_site", "ingestions", ["site", "started"])


def downgrade() -> None:
    op.drop_table("ingestions")
    op.drop_table("resource_history")
    op.drop_table("resources")
