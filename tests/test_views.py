"""The monitoring views DBAs read, as cache_monitor through PgBouncer."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from psycopg import errors

from tests.harness import acting_as, connect, insert_entry

VIEWS = [
    "cache_performance_metrics",
    "partition_health_metrics",
    "cache_connection_metrics",
    "user_cache_analytics",
    "feature_table_health",
]


@pytest.mark.parametrize("view", VIEWS)
def test_monitor_reads_every_view(monitor_conn, view):
    cur = monitor_conn.execute(f"SELECT * FROM {view}")
    assert cur.description  # columns are there; rows depend on the data
    cur.fetchall()


@pytest.mark.parametrize("view", VIEWS)
def test_app_cannot_read_views(app_conn, view):
    with pytest.raises(errors.InsufficientPrivilege):
        with acting_as(app_conn, uuid.uuid4()):
            app_conn.execute(f"SELECT * FROM {view}")


def test_monitor_cannot_read_or_write_the_cache_itself(monitor_conn):
    for statement in (
        "SELECT * FROM infinite_pages_cache_partitioned",
        "SELECT * FROM cache_audit_log",
        "DELETE FROM cache_access_stats",
    ):
        with pytest.raises((errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction)):
            monitor_conn.execute(statement)


def test_performance_and_user_views_count_what_is_stored(admin, monitor_conn):
    content_type = "perf_" + uuid.uuid4().hex[:8]
    user = uuid.uuid4()
    for _ in range(3):
        insert_entry(admin, user, content_type)
    admin.execute(
        "SELECT record_cache_access(ARRAY[now()], ARRAY[%s]::uuid[], ARRAY[%s], ARRAY[8]::bigint[],"
        " ARRAY[2]::bigint[], ARRAY[800]::bigint[], ARRAY[0.8]::numeric[])",
        (user, content_type),
    )
    row = monitor_conn.execute(
        "SELECT live_entries, users, hits_24h, misses_24h, hit_rate_24h, tokens_saved_24h"
        " FROM cache_performance_metrics WHERE content_type = %s",
        (content_type,),
    ).fetchone()
    assert tuple(map(float, row)) == (3, 1, 8, 2, 0.8, 800)
    row = monitor_conn.execute(
        "SELECT live_entries, content_types, hits_30d, hit_rate_30d FROM user_cache_analytics WHERE user_id = %s",
        (user,),
    ).fetchone()
    assert tuple(map(float, row)) == (3, 1, 8, 0.8)


def test_partition_health_covers_every_partition(admin, monitor_conn):
    rows = monitor_conn.execute(
        "SELECT parent_table, partition_name, range_start, range_end, rls_forced, policies FROM partition_health_metrics"
    ).fetchall()
    actual = admin.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent IN"
        " ('infinite_pages_cache_partitioned'::regclass, 'cache_audit_log'::regclass)"
    ).fetchone()[0]
    assert len(rows) == actual >= 8
    parent_policies = dict(admin.execute(
        "SELECT polrelid::regclass::text, count(*) FROM pg_policy"
        " WHERE polrelid IN ('infinite_pages_cache_partitioned'::regclass, 'cache_audit_log'::regclass) GROUP BY 1"
    ).fetchall())
    for parent, name, start, end, forced, policies in rows:
        assert name.endswith(f"_y{start:%Y}m{start:%m}")
        assert (end - start) >= dt.timedelta(days=28) and start.day == 1
        assert forced and policies == parent_policies[parent]


def test_connection_metrics_see_other_roles(stack, monitor_conn):
    with connect(stack, "cachesvc_maintainer", direct=True) as other:
        other.execute("SELECT 1")
        roles = {r[0] for r in monitor_conn.execute("SELECT role_name FROM cache_connection_metrics")}
    assert "cachesvc_maintainer" in roles


def test_feature_table_health_reports_feature_tables(admin, monitor_conn):
    admin.execute("CREATE SCHEMA IF NOT EXISTS features")
    admin.execute("CREATE TABLE features.health_probe (entity_key text PRIMARY KEY, score double precision)")
    try:
        admin.execute("INSERT INTO features.health_probe SELECT 'k' || g, g FROM generate_series(1, 500) g")
        admin.execute("ANALYZE features.health_probe")
        for _ in range(5):
            admin.execute("SELECT score FROM features.health_probe WHERE entity_key = 'k7'")
        admin.execute("SELECT pg_stat_force_next_flush()")
        row = monitor_conn.execute(
            "SELECT row_estimate, has_primary_key, idx_scan > 0, buffer_hit_ratio BETWEEN 0 AND 1"
            " FROM feature_table_health WHERE table_name = 'health_probe'"
        ).fetchone()
        assert row == (500, True, True, True)
    finally:
        admin.execute("DROP TABLE features.health_probe")
