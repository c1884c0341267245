"""Who: a reviewer's identity and whether a sign-in provider verified it; the audit trail of events; rows
of verdicts and events that the database itself keeps from being changed or deleted.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

APPEND_ONLY = ("verdicts", "events")


def upgrade() -> None:
    # plain ADD COLUMN on both (no table copy on SQLite: its CHECK and its rows stay as they are)
    op.add_column("verdicts", sa.Column("reviewer_id", sa.Text, nullable=False, server_default=""))
    op.add_column("verdicts", sa.Column("verified", sa.Boolean, nullable=False, server_default=sa.false()))
    op.create_table(
        "events",
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("actor_id", sa.Text, nullable=False, server_default=""),
        sa.Column("verified", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created", sa.Text, nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("events_kind", "events", ["kind", "seq"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute("CREATE OR REPLACE FUNCTION pcam_append_only() RETURNS trigger AS $$ BEGIN "
                   "RAISE EXCEPTION '% rows are append-only: add a row instead', TG_TABLE_NAME; END; "
                   "$$ LANGUAGE plpgsql")
        for table in APPEND_ONLY:
            op.execute(f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                       "FOR EACH ROW EXECUTE FUNCTION pcam_append_only()")
    else:
        for table in APPEND_ONLY:
            for action in ("UPDATE", "DELETE"):
                op.execute(f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} BEGIN "
                           f"SELECT RAISE(ABORT, '{table} rows are append-only: add a row instead'); END")
