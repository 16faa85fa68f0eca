"""Monthly partitions: creation, the self-healing write path, and the expiry function."""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import errors

from tests.harness import acting_as, connect, insert_entry
from tests.harness import free_month as month_without_partitions

PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def months_from_now(n: int) -> dt.date:
    today = dt.datetime.now(dt.UTC).date().replace(day=1)
    year, month = divmod(today.month - 1 + n, 12)
    return dt.date(today.year + year, month + 1, 1)


def partitions(conn, parent="infinite_pages_cache_partitioned") -> list[str]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = %s::regclass ORDER BY 1",
            (parent,),
        )
    ]


def test_migration_made_this_month_and_three_ahead_without_default(admin):
    expected = [f"infinite_pages_cache_y{m:%Y}m{m:%m}" for m in map(months_from_now, range(4))]
    names = partitions(admin)
    assert set(expected) <= set(names)
    assert set(f"cache_audit_log_y{m:%Y}m{m:%m}" for m in map(months_from_now, range(4))) <= set(
        partitions(admin, "cache_audit_log")
    )
    assert admin.execute("SELECT count(*) FROM partition_health_metrics WHERE is_default").fetchone()[0] == 0


@pytest.fixture
def free_month(admin) -> Iterator[dt.datetime]:
    """A month near now without partitions (whatever earlier tests made), its partitions dropped after."""
    at = month_without_partitions(admin)
    yield at
    for parent in ("infinite_pages_cache", "cache_audit_log"):
        admin.execute(f"DROP TABLE IF EXISTS {parent}_y{at:%Y}m{at:%m}")


def test_create_twice_is_a_no_op(maintainer_conn, free_month):
    month = free_month.date()
    first = maintainer_conn.execute("SELECT create_monthly_cache_partition(%s)", (month,)).fetchone()[0]
    before = partitions(maintainer_conn)
    second = maintainer_conn.execute("SELECT create_monthly_cache_partition(%s)", (month,)).fetchone()[0]
    assert first == second == f"infinite_pages_cache_y{month:%Y}m{month:%m}"
    assert partitions(maintainer_conn) == before


def test_new_partition_has_rls_policies_owner_and_no_app_privileges(admin, maintainer_conn, free_month):
    month = free_month.date()
    child = maintainer_conn.execute("SELECT create_monthly_cache_partition(%s)", (month,)).fetchone()[0]
    rls, forced, owner = admin.execute(
        "SELECT relrowsecurity, relforcerowsecurity, relowner::regrole::text FROM pg_class WHERE relname = %s",
        (child,),
    ).fetchone()
    assert (rls, forced, owner) == (True, True, "cache_maintainer")
    parent_policies = admin.execute(
        "SELECT policyname, cmd, roles, qual, with_check FROM pg_policies"
        " WHERE tablename = 'infinite_pages_cache_partitioned' ORDER BY 1"
    ).fetchall()
    child_policies = admin.execute(
        "SELECT policyname, cmd, roles, qual, with_check FROM pg_policies WHERE tablename = %s ORDER BY 1", (child,)
    ).fetchall()
    assert child_policies == parent_policies and len(child_policies) == 5  # read (a set of users), insert, update, delete (one user), maintainer
    for role in ("cache_app", "cachesvc_app", "cache_monitor"):
        for privilege in PRIVILEGES:
            assert not admin.execute("SELECT has_table_privilege(%s, %s, %s)", (role, child, privilege)).fetchone()[0]
    # The parent's partitioned indexes were attached to the new child.
    indexes = admin.execute("SELECT count(*) FROM pg_indexes WHERE tablename = %s", (child,)).fetchone()[0]
    assert indexes == 3  # primary key, lookup, expiry


def test_concurrent_creation_of_one_month(stack, free_month):
    month = free_month.date()
    results, failures = [], []

    def create():
        try:
            with connect(stack, "cachesvc_maintainer", direct=True, autocommit=True) as conn:
                results.append(conn.execute("SELECT create_monthly_cache_partition(%s)", (month,)).fetchone()[0])
        except Exception as exc:  # collected and asserted below
            failures.append(exc)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    assert len(set(results)) == 1 and len(results) == 6


def test_write_to_missing_month_heals_through_ensure_function(app_conn, admin, free_month):
    """The service's retry path: insert fails, ensure_monthly_partitions(), insert again."""
    user = uuid.uuid4()
    at = month = free_month
    assert f"infinite_pages_cache_y{month:%Y}m{month:%m}" not in partitions(admin)
    with pytest.raises(errors.CheckViolation, match="no partition of relation"):
        with acting_as(app_conn, user):
            insert_entry(app_conn, user, created_at=at)
    with acting_as(app_conn, user):
        made = app_conn.execute("SELECT ensure_monthly_partitions(%s)", (at,)).fetchone()[0]
    assert made == [f"infinite_pages_cache_y{month:%Y}m{month:%m}", f"cache_audit_log_y{month:%Y}m{month:%m}"]
    with acting_as(app_conn, user):
        insert_entry(app_conn, user, created_at=at)
        assert app_conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone()[0] == 1
    child = made[0]
    assert admin.execute("SELECT relowner::regrole::text FROM pg_class WHERE relname = %s", (child,)).fetchone() == (
        "cache_maintainer",
    )


def test_app_may_not_create_partitions_at_will(app_conn):
    far = dt.datetime.now(dt.UTC) + dt.timedelta(days=5 * 365)
    with pytest.raises(errors.InvalidParameterValue, match="outside the window"):
        with acting_as(app_conn, None):
            app_conn.execute("SELECT ensure_monthly_partitions(%s)", (far,))
    for call in (
        "SELECT create_monthly_cache_partition(current_date)",
        "SELECT cachesvc_create_monthly_partition('infinite_pages_cache_partitioned', 'x', current_date)",
        "SELECT cleanup_expired_cache_entries_production()",
    ):
        with pytest.raises(errors.InsufficientPrivilege, match="permission denied"):
            with acting_as(app_conn, None):
                app_conn.execute(call)


def test_cleanup_removes_only_expired_rows(admin, maintainer_conn):
    users = [uuid.uuid4() for _ in range(3)]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    admin.execute("SELECT create_monthly_cache_partition(%s)", (past.date(),))  # on the 1st, last month
    expired, live = [], []
    for user in users:
        for i in range(7):
            expired.append(insert_entry(admin, user, key=f"old-{i}", created_at=past, ttl="1 hour"))
        for i in range(4):
            live.append(insert_entry(admin, user, key=f"new-{i}", ttl="1 day"))
    # Batches of 5: several statements in one call.
    removed = maintainer_conn.execute("SELECT cleanup_expired_cache_entries_production(5)").fetchone()[0]
    assert removed >= len(expired)  # other tests' expired rows may go too; never a live one
    remaining = admin.execute(
        "SELECT cache_key LIKE 'new-%%', count(*) FROM infinite_pages_cache_partitioned"
        " WHERE user_id = ANY(%s) GROUP BY 1",
        (users,),
    ).fetchall()
    assert remaining == [(True, len(live))]
    # Run again (it may find rows of other tests that expired since): nothing of ours changes.
    maintainer_conn.execute("SELECT cleanup_expired_cache_entries_production()")
    assert admin.execute(
        "SELECT cache_key LIKE 'new-%%', count(*) FROM infinite_pages_cache_partitioned"
        " WHERE user_id = ANY(%s) GROUP BY 1",
        (users,),
    ).fetchall() == remaining


def test_cleanup_with_one_batch_per_call_stops_at_batch_size(admin, maintainer_conn):
    user = uuid.uuid4()
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    admin.execute("SELECT create_monthly_cache_partition(%s)", (past.date(),))
    for i in range(12):
        insert_entry(admin, user, key=f"e{i}", created_at=past, ttl="1 minute")
    first = maintainer_conn.execute("SELECT cleanup_expired_cache_entries_production(5, 1)").fetchone()[0]
    assert first == 5
    total = first
    while (n := maintainer_conn.execute("SELECT cleanup_expired_cache_entries_production(5, 1)").fetchone()[0]) > 0:
        total += n
    assert total >= 12
    assert admin.execute(
        "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)
    ).fetchone() == (0,)
    with pytest.raises(psycopg.errors.InvalidParameterValue):
        maintainer_conn.execute("SELECT cleanup_expired_cache_entries_production(0)")
