"""Security: registered SMART Backend Services clients, used client-assertion ids (``jti``, replay
protection), and the append-only audit trail (AuditEvent).

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_SQLITE_GUARDS = [
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END",
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END",
]
_PG_GUARDS = [
    "CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'audit events are append-only'; END $$",
    "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
    "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()",
    "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()",
]


def upgrade() -> None:
    op.create_table(
        "auth_clients",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("site", sa.String(32)),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("jwks", sa.Text, nullable=False),
        sa.Column("created", sa.String(40), nullable=False),
        sa.Column("revoked", sa.String(40)),
    )
    op.create_table(
        "auth_jti",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires", sa.Integer, nullable=False),
    )
    op.create_table(
        "audit_events",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("recorded", sa.String(40), nullable=False),
        sa.Column("client_id", sa.String(64)),
        sa.Column("role", sa.String(16)),
        sa.Column("site", sa.String(32)),
        sa.Column("action", sa.String(1), nullable=False),
        sa.Column("subtype", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(2), nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("entity", sa.String(200)),
        sa.Column("resource", sa.Text, nullable=False),
    )
    op.create_index("ix_audit_events_recorded", "audit_events", ["recorded"])
    op.create_index("ix_audit_events_client", "audit_events", ["client_id", "recorded"])
    for stmt in _PG_GUARDS if op.get_bind().dialect.name == "postgresql" else _SQLITE_GUARDS:
        op.execute(stmt)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    op.drop_table("audit_events")
    op.drop_table("auth_jti")
    op.drop_table("auth_clients")
