"""The store as the sqlite3 versions wrote it: verdicts, tags and drawn regions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "verdicts",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("patch_id", sa.Text, nullable=False),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("checkpoint", sa.Text, nullable=False, server_default=""),
        sa.Column("prob", sa.Float),
        sa.Column("created", sa.Text, nullable=False),
        sa.CheckConstraint("verdict IN ('tumour', 'normal', 'unsure')", name="verdict_answer"),
        sqlite_autoincrement=True,
    )
    op.create_index("verdicts_patch", "verdicts", ["dataset", "patch_id", "seq"])
    op.create_table(
        "tags",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("patch_id", sa.Text, nullable=False),
        sa.Column("tag", sa.Text, nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("tags_dataset", "tags", ["dataset", "tag"])
    op.create_index("tags_patch", "tags", ["dataset", "tag", "patch_id"])
    op.create_table(
        "regions",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("points", sa.Text, nullable=False, server_default="[]"),
        sa.Column("removes", sa.Integer),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("created", sa.Text, nullable=False),
        sa.CheckConstraint("kind IN ('tumour', 'normal', 'removed')", name="region_kind"),
        sqlite_autoincrement=True,
    )
    op.create_index("regions_dataset", "regions", ["dataset", "seq"])
