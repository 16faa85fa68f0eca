"""Writes carry their request's deadline: one that reaches the server late commits nothing.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29
"""

from cachesvc import sqlfiles

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SQL_FILES = ["functions/cachesvc_before_deadline.v1.sql"]


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("functions/cachesvc_before_deadline.v1.sql")
    sqlfiles.execute(
        "REVOKE ALL ON FUNCTION cachesvc_before_deadline(timestamptz) FROM PUBLIC;"
        "GRANT EXECUTE ON FUNCTION cachesvc_before_deadline(timestamptz) TO cache_app;"
    )
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute("DROP FUNCTION cachesvc_before_deadline(timestamptz)")
    sqlfiles.execute("RESET ROLE")
