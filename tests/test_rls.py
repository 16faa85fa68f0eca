"""Row-level security as the service meets it: cache_app, through PgBouncer, per transaction."""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid

import psycopg
import pytest
from psycopg import errors

from tests.harness import acting_as, connect, insert_entry


@pytest.fixture
def two_users(admin):
    """Users A and B with three and two rows, inserted behind RLS's back."""
    a, b = uuid.uuid4(), uuid.uuid4()
    for user, n in ((a, 3), (b, 2)):
        for _ in range(n):
            insert_entry(admin, user)
    return a, b


def test_app_login_cannot_bypass_rls(admin):
    row = admin.execute(
        "SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = 'cachesvc_app'"
    ).fetchone()
    assert row == (False, False)
    owned = admin.execute(
        """SELECT count(*) FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner
            WHERE r.rolname IN ('cachesvc_app', 'cache_app')"""
    ).fetchone()[0]
    assert owned == 0


def test_user_sees_exactly_own_rows(app_conn, admin, two_users):
    a, b = two_users
    with acting_as(app_conn, a):
        users = app_conn.execute("SELECT DISTINCT user_id FROM infinite_pages_cache_partitioned").fetchall()
        count = app_conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone()[0]
    assert users == [(a,)]
    assert count == 3
    # The forbidden path: B's rows exist, A just cannot see them.
    with acting_as(app_conn, a):
        assert app_conn.execute(
            "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (b,)
        ).fetchone()[0] == 0
    assert admin.execute(
        "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (b,)
    ).fetchone()[0] == 2


def test_no_user_set_sees_nothing_and_cannot_insert(app_conn, two_users):
    with acting_as(app_conn, None):
        assert app_conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone()[0] == 0
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with acting_as(app_conn, None):
            insert_entry(app_conn, two_users[0])


def test_cannot_write_into_another_user(app_conn, admin, two_users):
    a, b = two_users
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with acting_as(app_conn, a):
            insert_entry(app_conn, b)
    # Moving one's own row to another user is refused by WITH CHECK.
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with acting_as(app_conn, a):
            app_conn.execute("UPDATE infinite_pages_cache_partitioned SET user_id = %s", (b,))
    # Updating or deleting B's rows while acting as A touches nothing.
    with acting_as(app_conn, a):
        updated = app_conn.execute(
            "UPDATE infinite_pages_cache_partitioned SET hit_count = 99 WHERE user_id = %s", (b,)
        ).rowcount
        deleted = app_conn.execute(
            "DELETE FROM infinite_pages_cache_partitioned WHERE user_id = %s", (b,)
        ).rowcount
    assert (updated, deleted) == (0, 0)
    assert admin.execute(
        "SELECT count(*), max(hit_count) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (b,)
    ).fetchone() == (2, 0)


def test_own_rows_can_be_written(app_conn, admin):
    a = uuid.uuid4()
    with acting_as(app_conn, a):
        insert_entry(app_conn, a, key="mine")
        assert app_conn.execute(
            "UPDATE infinite_pages_cache_partitioned SET hit_count = 5 WHERE cache_key = 'mine'"
        ).rowcount == 1
    assert admin.execute(
        "SELECT hit_count FROM infinite_pages_cache_partitioned WHERE user_id = %s", (a,)
    ).fetchone() == (5,)


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT count(*) FROM {p}",
        "INSERT INTO {p} (user_id, content_type, cache_key, content, expires_at)"
        " VALUES (cachesvc_current_user_id(), 'chapter', 'direct', '{{}}', now() + interval '1 hour')",
        "DELETE FROM {p}",
    ],
)
def test_partition_named_directly_is_refused(app_conn, admin, two_users, statement):
    partition = admin.execute(
        "SELECT partition_name FROM partition_health_metrics"
        " WHERE parent_table = 'infinite_pages_cache_partitioned' AND now() >= range_start AND now() < range_end"
    ).fetchone()[0]
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        with acting_as(app_conn, two_users[0]):
            app_conn.execute(statement.format(p=partition))


def test_partitions_enforce_rls_even_if_granted(admin, stack, two_users):
    """The second wall: a partition wrongly granted to cache_app still filters by user."""
    a, _ = two_users
    partition = admin.execute(
        "SELECT partition_name FROM partition_health_metrics"
        " WHERE parent_table = 'infinite_pages_cache_partitioned' AND now() >= range_start AND now() < range_end"
    ).fetchone()[0]
    admin.execute(f"GRANT SELECT ON {partition} TO cache_app")
    try:
        with connect(stack, "cachesvc_app") as conn:
            with acting_as(conn, a):
                users = conn.execute(f"SELECT DISTINCT user_id FROM {partition}").fetchall()
            with acting_as(conn, None):
                nobody = conn.execute(f"SELECT count(*) FROM {partition}").fetchone()[0]
    finally:
        admin.execute(f"REVOKE SELECT ON {partition} FROM cache_app")
    assert users == [(a,)]
    assert nobody == 0


def test_user_setting_does_not_leak_to_next_transaction(stack, two_users):
    """Two clients of PgBouncer take turns on one server connection; the second sees nothing."""
    a, _ = two_users
    with connect(stack, "cachesvc_app") as first, connect(stack, "cachesvc_app") as second:
        for _ in range(20):
            with acting_as(first, a):
                pid_first = first.execute("SELECT pg_backend_pid()").fetchone()[0]
                assert first.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone()[0] == 3
            with second.transaction():
                pid_second, setting, visible = second.execute(
                    "SELECT pg_backend_pid(), current_setting('cachesvc.user_id', true),"
                    " (SELECT count(*) FROM infinite_pages_cache_partitioned)"
                ).fetchone()
            if pid_first == pid_second:
                break
        else:
            pytest.fail("PgBouncer never gave both clients the same server connection")
    assert setting in ("", None)
    assert visible == 0


def test_audit_log_is_append_only_for_own_user(app_conn, admin):
    a, b = uuid.uuid4(), uuid.uuid4()
    with acting_as(app_conn, a):
        app_conn.execute(
            "INSERT INTO cache_audit_log (user_id, actor, action, content_type, cache_key)"
            " VALUES (%s, 'user', 'put', 'chapter', 'k1')",
            (a,),
        )
    assert admin.execute("SELECT count(*) FROM cache_audit_log WHERE user_id = %s", (a,)).fetchone()[0] == 1
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        with acting_as(app_conn, a):
            app_conn.execute("SELECT count(*) FROM cache_audit_log")
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with acting_as(app_conn, a):
            app_conn.execute(
                "INSERT INTO cache_audit_log (user_id, actor, action) VALUES (%s, 'user', 'put')", (b,)
            )
    for statement in ("UPDATE cache_audit_log SET action = 'x'", "DELETE FROM cache_audit_log"):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
            with acting_as(app_conn, a):
                app_conn.execute(statement)


def test_access_stats_only_through_function_and_only_own(app_conn, admin):
    a, b = uuid.uuid4(), uuid.uuid4()
    flush = """SELECT recorded FROM record_cache_access(%s::timestamptz[], %s::uuid[], %s::text[], %s::bigint[],
                                          %s::bigint[], %s::bigint[], %s::numeric[])"""
    batch = ([dt.datetime.now(dt.UTC).replace(minute=17)] * 2, [a, b], ["chapter", "chapter"], [3, 1], [1, 0], [300, 50], [0.3, 0.05])
    with acting_as(app_conn, None):
        assert app_conn.execute(flush, batch).fetchone()[0] == 2
    with acting_as(app_conn, None):
        app_conn.execute(flush, batch)  # a second flush adds to the same hourly rows
    rows = admin.execute(
        "SELECT user_id, bucket, hits, misses, tokens_saved FROM cache_access_stats WHERE user_id IN (%s, %s) ORDER BY hits",
        (a, b),
    ).fetchall()
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [(b, 2, 0, 100), (a, 6, 2, 600)]
    assert all(r[1].minute == 0 for r in rows)
    with acting_as(app_conn, a):
        mine = app_conn.execute("SELECT user_id, hits FROM cache_access_stats").fetchall()
    assert mine == [(a, 6)]
    with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
        with acting_as(app_conn, a):
            app_conn.execute(
                "INSERT INTO cache_access_stats (bucket, user_id, content_type, hits)"
                " VALUES (date_trunc('hour', now()), %s, 'chapter', 1000)",
                (a,),
            )


def test_hit_counts_flush_across_users(app_conn, admin):
    a, b = uuid.uuid4(), uuid.uuid4()
    ra, rb = insert_entry(admin, a), insert_entry(admin, b)
    with acting_as(app_conn, None):
        updated = app_conn.execute(
            "SELECT updated FROM record_cache_hits(%s::bigint[], %s::timestamptz[], %s::bigint[], %s::timestamptz[])",
            ([ra[0], rb[0], -1], [ra[1], rb[1], ra[1]], [4, 2, 7], [ra[1], rb[1], ra[1]]),
        ).fetchone()[0]
    assert updated == 2  # the unknown id is skipped
    got = admin.execute(
        "SELECT user_id, hit_count, last_accessed_at IS NOT NULL FROM infinite_pages_cache_partitioned"
        " WHERE user_id IN (%s, %s) ORDER BY hit_count",
        (a, b),
    ).fetchall()
    assert got == [(b, 2, True), (a, 4, True)]


def test_app_cannot_read_monitoring_views(app_conn):
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        with acting_as(app_conn, uuid.uuid4()):
            app_conn.execute("SELECT * FROM user_cache_analytics")


@contextlib.contextmanager
def reading_for(conn, users):
    """A coalesced read transaction, as the service's batcher runs it."""
    with conn.transaction():
        conn.execute("SELECT set_config('cachesvc.user_ids', %s, true)", (",".join(str(u) for u in users),))
        yield conn


def test_coalesced_read_sees_exactly_the_batch_users(app_conn, admin):
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    for user in (a, b, c):
        insert_entry(admin, user, key="shared")
    with reading_for(app_conn, [a, b]):
        seen = {r[0] for r in app_conn.execute(
            "SELECT user_id FROM infinite_pages_cache_partitioned WHERE cache_key = 'shared'"
        )}
    assert seen == {a, b}  # c's row exists but is not admitted


def test_coalesced_read_transaction_cannot_write(app_conn, admin):
    a, b = uuid.uuid4(), uuid.uuid4()
    insert_entry(admin, a, key="mine")
    with pytest.raises(errors.InsufficientPrivilege, match="row-level security"):
        with reading_for(app_conn, [a, b]):
            insert_entry(app_conn, a)
    with reading_for(app_conn, [a, b]):
        assert app_conn.execute("UPDATE infinite_pages_cache_partitioned SET hit_count = 9").rowcount == 0
        assert app_conn.execute("DELETE FROM infinite_pages_cache_partitioned").rowcount == 0
    assert admin.execute(
        "SELECT count(*), max(hit_count) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (a,)
    ).fetchone() == (1, 0)


def test_garbage_in_the_user_set_is_an_error_not_a_wider_read(app_conn):
    with pytest.raises(errors.InvalidTextRepresentation):
        with reading_for(app_conn, ["not-a-uuid"]):
            app_conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone()
