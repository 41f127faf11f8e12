"""HL7 v2 over MLLP (issue 21): the dead-letter table of messages acknowledged AE or AR.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "mllp_dead_letters",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("received", sa.String(40), nullable=False),
        sa.Column("site", sa.String(32), nullable=False),
        sa.Column("mapping", sa.String(64), nullable=False),
        sa.Column("control_id", sa.String(200)),
        sa.Column("ack_code", sa.String(2), nullable=False),
        sa.Column("errors", sa.Text, nullable=False),
        sa.Column("message", sa.LargeBinary, nullable=False),
        sa.Column("replayed", sa.String(40)),
        sa.Column("replay_ingestion", sa.String(36)),
    )
    op.create_index("ix_mllp_dead_letters_site", "mllp_dead_letters", ["site", "received"])


def downgrade() -> None:
    op.drop_index("ix_mllp_dead_letters_site", "mllp_dead_letters")
    op.drop_table("mllp_dead_letters")
