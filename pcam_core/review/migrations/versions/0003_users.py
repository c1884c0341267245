"""The people a signed-in app knows and their roles (admin, reviewer, viewer); a deactivated one is kept.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),  # the provider's issuer|subject
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("email", sa.Text, nullable=False, server_default=""),
        sa.Column("role", sa.Text, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
        sa.Column("created", sa.Text, nullable=False),
        sa.Column("last_seen", sa.Text),
        sa.CheckConstraint("role IN ('admin', 'reviewer', 'viewer')", name="user_role"),
    )
