"""Initial schema: roles, partitioned cache with RLS, audit log, access stats, views.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Run as a superuser, or as a role with CREATEROLE that may create in schema public; every
object is created as (and owned by) the group role cache_maintainer. Group roles are
cluster-wide and may be shared by other databases, so downgrade leaves them in place.
"""

from alembic import op
from cachesvc import sqlfiles

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Every sql/ file this migration loads, by exact versioned name, in order.
SQL_FILES = [
    "functions/cachesvc_current_user_id.v1.sql",
    "tables/infinite_pages_cache_partitioned.v1.sql",
    "tables/cache_audit_log.v1.sql",
    "tables/cache_access_stats.v1.sql",
    "policies/infinite_pages_cache_partitioned.v1.sql",
    "policies/cache_audit_log.v1.sql",
    "policies/cache_access_stats.v1.sql",
    "functions/cachesvc_copy_partition_policies.v1.sql",
    "functions/cachesvc_create_monthly_partition.v1.sql",
    "functions/create_monthly_cache_partition.v1.sql",
    "functions/create_monthly_audit_partition.v1.sql",
    "functions/ensure_monthly_partitions.v1.sql",
    "functions/cleanup_expired_cache_entries_production.v1.sql",
    "functions/record_cache_access.v1.sql",
    "functions/record_cache_hits.v1.sql",
    "views/cache_performance_metrics.v1.sql",
    "views/partition_health_metrics.v1.sql",
    "views/cache_connection_metrics.v1.sql",
    "views/user_cache_analytics.v1.sql",
    "views/feature_table_health.v1.sql",
]

VIEWS = [
    "cache_performance_metrics",
    "partition_health_metrics",
    "cache_connection_metrics",
    "user_cache_analytics",
    "feature_table_health",
]

ROLES = """
DO $$
DECLARE
    role_name text;
BEGIN
    -- Group roles: no login, no RLS bypass. Login users are granted them (cachesvc roles create-login).
    FOREACH role_name IN ARRAY ARRAY['cache_app', 'cache_maintainer', 'cache_monitor'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOBYPASSRLS', role_name);
        END IF;
    END LOOP;
    -- The migrating role must be able to SET ROLE cache_maintainer.
    IF NOT pg_has_role(current_user, 'cache_maintainer', 'MEMBER') THEN
        EXECUTE format('GRANT cache_maintainer TO %I', current_user);
    END IF;
    -- cache_maintainer creates (and so owns) the objects in schema public.
    EXECUTE 'GRANT CREATE ON SCHEMA public TO cache_maintainer';
    -- cache_monitor sees every session in pg_stat_activity (cache_connection_metrics).
    BEGIN
        EXECUTE 'GRANT pg_read_all_stats TO cache_monitor';
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'could not grant pg_read_all_stats to cache_monitor; cache_connection_metrics will show only its own sessions';
    END;
END
$$;
"""

GRANTS = """
-- Nothing is executable or readable by PUBLIC unless granted below.
REVOKE ALL ON infinite_pages_cache_partitioned, cache_audit_log, cache_access_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION cachesvc_copy_partition_policies(regclass, regclass),
                       cachesvc_create_monthly_partition(regclass, text, date),
                       create_monthly_cache_partition(date),
                       create_monthly_audit_partition(date),
                       ensure_monthly_partitions(timestamptz),
                       cleanup_expired_cache_entries_production(integer, integer),
                       record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[]),
                       record_cache_hits(bigint[], timestamptz[], bigint[], timestamptz[])
    FROM PUBLIC;

-- The service: the cache parent only (never a partition), append-only audit, its own stats.
GRANT SELECT, INSERT, UPDATE, DELETE ON infinite_pages_cache_partitioned TO cache_app;
GRANT INSERT ON cache_audit_log TO cache_app;
GRANT SELECT, DELETE ON cache_access_stats TO cache_app;
GRANT EXECUTE ON FUNCTION cachesvc_current_user_id() TO cache_app;
GRANT EXECUTE ON FUNCTION ensure_monthly_partitions(timestamptz),
                          record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[]),
                          record_cache_hits(bigint[], timestamptz[], bigint[], timestamptz[])
    TO cache_app;

-- DBAs: the monitoring views.
GRANT SELECT ON cache_performance_metrics, partition_health_metrics, cache_connection_metrics,
                user_cache_analytics, feature_table_health TO cache_monitor;
"""


def upgrade() -> None:
    sqlfiles.execute(ROLES)
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    for name in SQL_FILES:
        sqlfiles.run(name)
    sqlfiles.execute(GRANTS)
    # Partitions for this month and three ahead; maintenance keeps them ahead from here on.
    sqlfiles.execute(
        """
        SELECT create_monthly_cache_partition(m), create_monthly_audit_partition(m)
          FROM (SELECT ((now() AT TIME ZONE 'UTC')::date + make_interval(months => g))::date AS m
                  FROM generate_series(0, 3) AS g) AS months
        """
    )
    sqlfiles.execute("RESET ROLE")
    # Readiness compares the schema's revision with the service's; let it read it.
    op.execute("GRANT SELECT ON alembic_version TO cache_app, cache_monitor, cache_maintainer")


def downgrade() -> None:
    op.execute("REVOKE SELECT ON alembic_version FROM cache_app, cache_monitor, cache_maintainer")
    sqlfiles.execute(
        """
        DROP VIEW IF EXISTS feature_table_health, user_cache_analytics, cache_connection_metrics,
                            partition_health_metrics, cache_performance_metrics;
        DROP FUNCTION IF EXISTS record_cache_hits(bigint[], timestamptz[], bigint[], timestamptz[]),
            record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[]),
            cleanup_expired_cache_entries_production(integer, integer),
            ensure_monthly_partitions(timestamptz),
            create_monthly_audit_partition(date),
            create_monthly_cache_partition(date),
            cachesvc_create_monthly_partition(regclass, text, date),
            cachesvc_copy_partition_policies(regclass, regclass);
        DROP TABLE IF EXISTS cache_access_stats, cache_audit_log, infinite_pages_cache_partitioned;
        DROP FUNCTION IF EXISTS cachesvc_current_user_id();
        REVOKE CREATE ON SCHEMA public FROM cache_maintainer;
        """
    )
