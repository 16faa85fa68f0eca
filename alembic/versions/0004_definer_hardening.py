"""Hardened SECURITY DEFINER functions, validated counters, erasure that holds.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

* Every function that sets a search_path now names pg_temp last (where it is not named,
  PostgreSQL searches it first, and the partition functions run with a definer's rights when
  ensure_monthly_partitions calls them), and TEMP on the database is revoked from PUBLIC:
  neither the service nor maintenance uses temporary tables.
* record_cache_access, record_cache_hits and record_feature_hot_keys validate every element,
  refuse a bad one instead of raising, and saturate instead of overflowing;
  record_cache_access also drops counts taken before their user's erasure.
* cachesvc_begin_erasure() and cache_erasures: an erase serialises with counter flushes,
  is remembered by them, and redacts the user's cache keys in the audit log.

The database-level REVOKE needs the database's owner or a superuser; when it has no effect
the upgrade warns. Downgrade restores 0003's objects and TEMP for PUBLIC; on PostgreSQL 14 it
does not give PUBLIC back CREATE on schema public (15 and later never had it).
"""

from cachesvc import sqlfiles

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Functions whose body is unchanged; version 2 adds pg_temp to their search_path.
PINNED = {
    "functions/cachesvc_copy_partition_policies.v2.sql": "cachesvc_copy_partition_policies(regclass, regclass)",
    "functions/cachesvc_create_monthly_partition.v2.sql": "cachesvc_create_monthly_partition(regclass, text, date)",
    "functions/cachesvc_sync_partition_policies.v2.sql": "cachesvc_sync_partition_policies(regclass)",
    "functions/create_monthly_cache_partition.v2.sql": "create_monthly_cache_partition(date)",
    "functions/create_monthly_audit_partition.v2.sql": "create_monthly_audit_partition(date)",
    "functions/cleanup_expired_cache_entries_production.v2.sql": "cleanup_expired_cache_entries_production(integer, integer)",
}

UPGRADE_FILES = [
    *PINNED,
    "tables/cache_erasures.v1.sql",
    "policies/cache_erasures.v1.sql",
    "functions/record_cache_access.v2.sql",
    "functions/record_cache_hits.v2.sql",
    "functions/record_feature_hot_keys.v2.sql",
    "functions/cachesvc_begin_erasure.v1.sql",
]
# Downgrade recreates 0003's counter functions from their first versions.
DOWNGRADE_FILES = [
    "functions/record_cache_access.v1.sql",
    "functions/record_cache_hits.v1.sql",
    "functions/record_feature_hot_keys.v1.sql",
]
# Every sql/ file this migration loads.
SQL_FILES = UPGRADE_FILES + DOWNGRADE_FILES

OLD_ACCESS = "record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[])"
NEW_ACCESS = "record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[], timestamptz[])"
HITS = "record_cache_hits(bigint[], timestamptz[], bigint[], timestamptz[])"
HOT_KEYS = "record_feature_hot_keys(text[], bigint[])"

REVOKE_TEMP = """
DO $$
BEGIN
    EXECUTE format('REVOKE TEMPORARY ON DATABASE %I FROM PUBLIC', current_database());
    -- PostgreSQL 14 still lets PUBLIC create in schema public, where a definer's unqualified
    -- calls could find a look-alike function; 15 and later never allow it.
    REVOKE CREATE ON SCHEMA public FROM PUBLIC;
    IF has_database_privilege('cache_app', current_database(), 'TEMPORARY') THEN
        RAISE WARNING 'cache_app can still create temporary tables in %', current_database()
              USING HINT = 'As the database owner, revoke TEMPORARY on it from PUBLIC and from cache_app.';
    END IF;
END
$$;
"""

GRANT_TEMP = """
DO $$
BEGIN
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO PUBLIC', current_database());
END
$$;
"""

# A NaN cost (accepted by version 1) makes every sum of the user's costs NaN: reset it, and
# let the table refuse it from now on.
REPAIR_STATS = """
UPDATE cache_access_stats SET cost_saved_usd = 0 WHERE cost_saved_usd = 'NaN';
ALTER TABLE cache_access_stats ADD CONSTRAINT cache_access_stats_cost_not_nan CHECK (cost_saved_usd <> 'NaN');
"""

GRANTS = f"""
REVOKE ALL ON cache_erasures FROM PUBLIC;
REVOKE ALL ON FUNCTION {NEW_ACCESS}, {HITS}, cachesvc_begin_erasure() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {NEW_ACCESS}, {HITS}, cachesvc_begin_erasure() TO cache_app;
"""

DOWNGRADE_GRANTS = f"""
REVOKE ALL ON FUNCTION {OLD_ACCESS}, {HITS}, {HOT_KEYS} FROM PUBLIC;
GRANT EXECUTE ON FUNCTION {OLD_ACCESS}, {HITS}, {HOT_KEYS} TO cache_app;
"""


def upgrade() -> None:
    sqlfiles.execute(REVOKE_TEMP)
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    for name in PINNED:
        sqlfiles.run(name)
    sqlfiles.run("tables/cache_erasures.v1.sql")
    sqlfiles.run("policies/cache_erasures.v1.sql")
    sqlfiles.execute(REPAIR_STATS)
    sqlfiles.execute(f"DROP FUNCTION {OLD_ACCESS}; DROP FUNCTION {HITS};")
    sqlfiles.run("functions/record_cache_access.v2.sql")
    sqlfiles.run("functions/record_cache_hits.v2.sql")
    sqlfiles.run("functions/record_feature_hot_keys.v2.sql")
    sqlfiles.run("functions/cachesvc_begin_erasure.v1.sql")
    sqlfiles.execute(GRANTS)
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute(f"DROP FUNCTION cachesvc_begin_erasure(); DROP FUNCTION {NEW_ACCESS};"
                     f" DROP FUNCTION {HITS}; DROP FUNCTION {HOT_KEYS};")
    sqlfiles.run("functions/record_cache_access.v1.sql")
    sqlfiles.run("functions/record_cache_hits.v1.sql")
    sqlfiles.run("functions/record_feature_hot_keys.v1.sql")
    sqlfiles.execute(DOWNGRADE_GRANTS)
    sqlfiles.execute("ALTER TABLE cache_access_stats DROP CONSTRAINT cache_access_stats_cost_not_nan; DROP TABLE cache_erasures;")
    for signature in PINNED.values():
        sqlfiles.execute(f"ALTER FUNCTION {signature} SET search_path = pg_catalog, public")
    sqlfiles.execute("RESET ROLE")
    sqlfiles.execute(GRANT_TEMP)
