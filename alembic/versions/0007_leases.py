"""Generate-once leases (cache_leases): one caller generates a missed entry, the others wait.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from cachesvc import sqlfiles

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

SQL_FILES = ["tables/cache_leases.v1.sql", "policies/cache_leases.v1.sql"]


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("tables/cache_leases.v1.sql")
    sqlfiles.run("policies/cache_leases.v1.sql")
    sqlfiles.execute(
        "REVOKE ALL ON cache_leases FROM PUBLIC;"
        "GRANT SELECT, INSERT, UPDATE, DELETE ON cache_leases TO cache_app;"
    )
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute("DROP TABLE cache_leases")
    sqlfiles.execute("RESET ROLE")
