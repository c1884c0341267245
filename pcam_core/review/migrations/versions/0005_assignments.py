"""Assignments: patches, a Browse queue's patches or a whole slide given to a reviewer by an admin, kept as
rows (the latest for a patch and a reviewer is in force).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.create_table(
        "assignments",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("patch_id", sa.Text, nullable=False),  # "" : the whole dataset or slide
        sa.Column("assignee", sa.Text, nullable=False),  # issuer|subject, or name:<typed name>
        sa.Column("assignee_name", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("by_name", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("assignments_who", "assignments", ["dataset", "assignee", "seq"])
