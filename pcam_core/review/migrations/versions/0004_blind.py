"""Blind review: per dataset (or slide) an admin's switch, kept as rows (the latest is in force), and each
verdict marked with whether it was given blind.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("verdicts", sa.Column("blind", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "blind",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("hide_label", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("hide_model", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("by_name", sa.Text, nullable=False),
        sa.Column("by_id", sa.Text, nullable=False, server_default=""),
        sa.Column("created", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("blind_dataset", "blind", ["dataset", "seq"])
