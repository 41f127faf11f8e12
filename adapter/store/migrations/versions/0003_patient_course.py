"""Outcomes: the patient_course table (one analysis course per Patient), filled from the stored JSON.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "patient_course",
        sa.Column("patient_id", sa.String(64), primary_key=True),
        sa.Column("site", sa.String(32), nullable=False),
        sa.Column("course_version", sa.String(16), nullable=False),
        sa.Column("course", sa.Text, nullable=False),
    )
    op.create_index("ix_patient_course_site", "patient_course", ["site"])
    # backfill: every stored patient's course, by the code that maintains the table from now on
    from adapter.store.courses import refresh_courses

    bind = op.get_bind()
    ids = [pid for (pid,) in bind.execute(sa.text("SELECT id FROM resources WHERE type = 'Patient' AND deleted = :f"),
                                          {"f": False})]
    refresh_courses(bind, ids)


def downgrade() -> None:
    op.drop_table("patient_course")
