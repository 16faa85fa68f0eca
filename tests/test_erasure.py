"""Erasure holds (issue 17, item 8): no statistic comes back after DELETE /v1/cache, whichever
process flushes it and whenever, and no audit row of the user keeps a cache key."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import uuid

import httpx2
import pytest
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from cachesvc.cache.counters import Counters
from cachesvc.migrations import PROJECT_ROOT
from tests.harness import acting_as, as_user, connect, insert_entry, wait_until

ACCESS = (
    "SELECT recorded, refused, erased FROM record_cache_access(%s::timestamptz[], %s::uuid[], %s::text[],"
    " %s::bigint[], %s::bigint[], %s::bigint[], %s::numeric[], %s::timestamptz[])"
)


def stat_rows(admin, user) -> int:
    return admin.execute("SELECT count(*) FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone()[0]


def hit_and_wait_for_stats(http, tokens, admin, user) -> None:
    h = as_user(tokens, user)
    assert http.put("/v1/cache/chapter/k", json={"content": "x", "tokenCount": 10}, headers=h).status_code == 201
    assert http.get("/v1/cache/chapter/k", headers=h).status_code == 200
    wait_until(lambda: stat_rows(admin, user) == 1, 10, "the user's statistics flushed")


def waiting_advisory_locks(admin) -> int:
    return admin.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").fetchone()[0]


@pytest.mark.timing  # the erase must be seen waiting, and then let through, within the login's 2 s lock_timeout
@pytest.mark.parametrize("direct", [False, True], ids=["pgbouncer", "direct"])
def test_flush_in_flight_during_erase_does_not_recreate_statistics(http, tokens, stack, admin, direct):
    """A flush of the user's counts is open (its row written, not committed) when the erase
    arrives: the erase waits for it, then deletes what it wrote. Before the fix the erase's
    DELETE did not see the uncommitted row, and the flush's COMMIT brought it back."""
    user = uuid.uuid4()
    hit_and_wait_for_stats(http, tokens, admin, user)
    now = dt.datetime.now(dt.UTC)
    answers: list[httpx2.Response] = []
    with connect(stack, "cachesvc_app", direct=direct) as flush:
        with acting_as(flush, None):
            # One row the user has, and one new: an uncommitted insert is invisible to a DELETE,
            # which therefore would not wait for it.
            assert flush.execute(ACCESS, ([now] * 2, [user] * 2, ["chapter", "foundation"], [5, 1], [0, 0], [50, 0],
                                          [0.0, 0.0], [now] * 2)).fetchone() == (2, 0, 0)
            eraser = threading.Thread(target=lambda: answers.append(http.delete("/v1/cache", headers=as_user(tokens, user))))
            eraser.start()
            # the app login's lock_timeout is 2 s
            wait_until(lambda: waiting_advisory_locks(admin) == 1, 1.5, "the erase waiting on the flush's lock")
            assert not answers
        eraser.join(10)
    assert answers[0].status_code == 200 and answers[0].json() == {"deleted": 1}
    assert stat_rows(admin, user) == 0
    assert http.get("/v1/cache/stats", headers=as_user(tokens, user)).json()["hits"] == 0


def test_erase_waits_for_no_flush_of_other_users(http, tokens, stack, admin):
    """The lock is per user: a flush of someone else held open does not delay an erase."""
    user, other = uuid.uuid4(), uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    with connect(stack, "cachesvc_app") as flush, acting_as(flush, None):
        flush.execute(ACCESS, ([now], [other], ["chapter"], [1], [0], [0], [0.0], [now]))
        # The flush holds its lock until after the answer: an erase that waited for it would
        # meet the app login's lock_timeout and fail, whatever the machine's speed.
        assert http.delete("/v1/cache", headers=as_user(tokens, user)).status_code == 200


def test_erase_behind_the_users_own_flush_held_open_fails_rather_than_waits_forever(http, tokens, stack):
    """The other side of the test above: the same flush, of the user's own counts, does stop it."""
    user = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    with connect(stack, "cachesvc_app") as flush, acting_as(flush, None):
        flush.execute(ACCESS, ([now], [user], ["chapter"], [1], [0], [0], [0.0], [now]))
        assert http.delete("/v1/cache", headers=as_user(tokens, user)).status_code == 503


def test_counts_taken_before_the_erase_and_flushed_after_it_are_dropped(http, tokens, stack, admin):
    """Another service process counted the user's reads before the erase and flushes after it."""
    user = uuid.uuid4()
    entry = insert_entry(admin, user)

    async def flush(counters: Counters) -> None:
        pool = AsyncConnectionPool(stack.url("cachesvc_app"), kwargs={"prepare_threshold": None},
                                   min_size=1, max_size=1, open=False)
        await pool.open(wait=True)
        try:
            await counters.flush(pool)
        finally:
            await pool.close()

    elsewhere = Counters()
    elsewhere.hit(user, "chapter", tuple(entry), 10, 0.5)
    elsewhere.miss(user, "foundation")
    assert http.delete("/v1/cache", headers=as_user(tokens, user)).json() == {"deleted": 1}
    asyncio.run(flush(elsewhere))
    assert (stat_rows(admin, user), elsewhere.rejected, elsewhere.pending) == (0, 0, 0)

    # Counts that begin after the erasure (and its margin) are the user's new statistics.
    admin.execute("UPDATE cache_erasures SET erased_at = erased_at - interval '1 minute' WHERE user_id = %s", (user,))
    later = Counters()
    later.miss(user, "chapter")
    asyncio.run(flush(later))
    assert stat_rows(admin, user) == 1


def test_pre_erase_counts_are_dropped_by_the_function(app_conn, admin):
    user = uuid.uuid4()
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    with acting_as(app_conn, user):
        app_conn.execute("SELECT cachesvc_begin_erasure()")
    with acting_as(app_conn, None):
        # Element by element: counting began before the erasure (given, or omitted: the hour's start).
        assert app_conn.execute(ACCESS, ([before], [user], ["chapter"], [1], [0], [0], [0.0], [before])).fetchone() == (0, 0, 1)
        assert app_conn.execute(ACCESS.replace(", %s::timestamptz[])", ")"),
                                ([before], [user], ["chapter"], [1], [0], [0], [0.0])).fetchone() == (0, 0, 1)
    assert stat_rows(admin, user) == 0


def test_erase_redacts_the_users_audit_keys_and_keeps_its_own_row(http, tokens, admin):
    user, other = uuid.uuid4(), uuid.uuid4()
    h = as_user(tokens, user)
    for key in ("alice@example.com/ch-1", "alice@example.com/ch-2"):
        assert http.put(f"/v1/cache/chapter/{key}", json={"content": 1}, headers=h).status_code == 201
    assert http.delete("/v1/cache/chapter/alice@example.com/ch-1", headers=h).status_code == 204
    assert http.put("/v1/cache/chapter/bob-key", json={"content": 1}, headers=as_user(tokens, other)).status_code == 201
    assert http.delete("/v1/cache", headers=h).json() == {"deleted": 1}

    rows = admin.execute(
        "SELECT action, content_type, cache_key FROM cache_audit_log WHERE user_id = %s ORDER BY id", (user,)
    ).fetchall()
    assert rows == [("put", "chapter", None), ("put", "chapter", None), ("delete", "chapter", None), ("erase", None, None)]
    assert admin.execute(
        "SELECT count(*) FROM cache_audit_log WHERE cache_key LIKE 'alice@example.com%%'"
    ).fetchone() == (0,)
    assert admin.execute(
        "SELECT cache_key FROM cache_audit_log WHERE user_id = %s", (other,)
    ).fetchall() == [("bob-key",)]
    # The runbook query finds keys an erase should have removed: none, until a month archived
    # before the erase is restored (here: a row of that time put back).
    check = (PROJECT_ROOT / "sql" / "checks" / "erased_keys_in_audit.sql").read_text()
    assert [r for r in admin.execute(check).fetchall() if r[1] == user] == []
    admin.execute("INSERT INTO cache_audit_log (occurred_at, user_id, actor, action, content_type, cache_key)"
                  " VALUES (now() - interval '1 minute', %s, 'user', 'put', 'chapter', 'alice@example.com/ch-0')", (user,))
    assert [r[1:3] for r in admin.execute(check).fetchall() if r[1] == user] == [(user, 1)]


def test_begin_erasure_acts_only_on_the_transactions_user(app_conn, admin):
    user, other = uuid.uuid4(), uuid.uuid4()
    for u in (user, other):
        admin.execute("INSERT INTO cache_audit_log (user_id, actor, action, content_type, cache_key)"
                      " VALUES (%s, 'user', 'put', 'chapter', 'secret-key')", (u,))
    with acting_as(app_conn, user):
        assert app_conn.execute("SELECT cachesvc_begin_erasure()").fetchone() == (1,)
    assert admin.execute(
        "SELECT user_id, cache_key FROM cache_audit_log WHERE user_id IN (%s, %s) ORDER BY cache_key NULLS FIRST",
        (user, other),
    ).fetchall() == [(user, None), (other, "secret-key")]
    # Forbidden paths: no user, an uppercase or malformed one, a coalesced read.
    for setting, value in (("cachesvc.user_id", ""), ("cachesvc.user_id", str(other).upper()),
                           ("cachesvc.user_id", "not-a-uuid"), ("cachesvc.user_ids", f"{user},{other}")):
        with pytest.raises(errors.InvalidParameterValue, match="cachesvc_begin_erasure"):
            with app_conn.transaction():
                app_conn.execute("SELECT set_config(%s, %s, true)", (setting, value))
                app_conn.execute("SELECT cachesvc_begin_erasure()")
    assert admin.execute("SELECT cache_key FROM cache_audit_log WHERE user_id = %s", (other,)).fetchone() == ("secret-key",)
    # The service cannot do it by hand, nor read or write erasure records.
    for statement in ("UPDATE cache_audit_log SET cache_key = NULL", "SELECT * FROM cache_erasures",
                      f"INSERT INTO cache_erasures VALUES ('{other}', now())", "DELETE FROM cache_erasures"):
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(app_conn, other):
                app_conn.execute(statement)
