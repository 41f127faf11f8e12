"""Subscriptions: the subscription_events outbox (adapter/subscriptions).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscription_events",
        sa.Column("subscription_id", sa.String(64), primary_key=True),
        sa.Column("event_number", sa.Integer, primary_key=True),
        sa.Column("resource_type", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer, nullable=False),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("delivered", sa.String(40)),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt", sa.String(40), nullable=False),
        sa.Column("last_error", sa.Text),
    )
    op.create_index("ix_subscription_events_pending", "subscription_events", ["delivered", "next_attempt"])


def downgrade() -> None:
    op.drop_table("subscription_events")
