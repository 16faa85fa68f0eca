"""Coalesced reads: the cache's SELECT policy admits the transaction's set of users.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Writes keep requiring the single transaction user. Existing partitions get the new policies
through cachesvc_sync_partition_policies(); new ones copy them at creation as before.
"""

from cachesvc import sqlfiles

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SQL_FILES = [
    "functions/cachesvc_current_user_ids.v1.sql",
    "functions/cachesvc_sync_partition_policies.v1.sql",
    "policies/infinite_pages_cache_partitioned.v2.sql",
]

DOWNGRADE_POLICIES = """
DROP POLICY cache_app_read_rows ON infinite_pages_cache_partitioned;
DROP POLICY cache_app_insert_own ON infinite_pages_cache_partitioned;
DROP POLICY cache_app_update_own ON infinite_pages_cache_partitioned;
DROP POLICY cache_app_delete_own ON infinite_pages_cache_partitioned;
CREATE POLICY cache_app_own_rows ON infinite_pages_cache_partitioned
    FOR ALL TO cache_app
    USING (user_id = cachesvc_current_user_id())
    WITH CHECK (user_id = cachesvc_current_user_id());
"""


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    for name in SQL_FILES:
        sqlfiles.run(name)
    sqlfiles.execute(
        "REVOKE ALL ON FUNCTION cachesvc_sync_partition_policies(regclass) FROM PUBLIC;"
        "SELECT cachesvc_sync_partition_policies('infinite_pages_cache_partitioned');"
    )
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute(DOWNGRADE_POLICIES)
    sqlfiles.execute("SELECT cachesvc_sync_partition_policies('infinite_pages_cache_partitioned')")
    sqlfiles.execute("DROP FUNCTION cachesvc_sync_partition_policies(regclass); DROP FUNCTION cachesvc_current_user_ids();")
    sqlfiles.execute("RESET ROLE")
