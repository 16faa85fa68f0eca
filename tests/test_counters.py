"""One poisoned counter never stops the statistics of everyone else (issue 17, item 3).

record_cache_access and record_cache_hits are granted to cache_app, so any holder of the
service's login can call them: they refuse bad elements (and say how many) instead of raising,
and totals saturate instead of overflowing. The flusher drops, and counts, what the database
refuses for a data reason, instead of retrying the same batch forever.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import uuid

import pytest
from psycopg_pool import AsyncConnectionPool

from cachesvc.cache.counters import Counters, EntryHits
from tests.harness import acting_as, as_user, connect, insert_entry, metric, wait_until

BIGINT_MAX = 2**63 - 1
ACCESS = (
    "SELECT recorded, refused, erased FROM record_cache_access(%s::timestamptz[], %s::uuid[], %s::text[],"
    " %s::bigint[], %s::bigint[], %s::bigint[], %s::numeric[])"
)
HITS = "SELECT updated, refused FROM record_cache_hits(%s::bigint[], %s::timestamptz[], %s::bigint[], %s::timestamptz[])"

# (hits, misses, tokens_saved, cost_saved_usd) of one element, each refused.
POISON = {
    "hits bigint max": (BIGINT_MAX, 0, 0, 0),
    "misses bigint max": (0, BIGINT_MAX, 0, 0),
    "tokens bigint max": (1, 0, BIGINT_MAX, 0),
    "negative hits": (-1, 0, 0, 0),
    "negative cost": (1, 0, 10, -0.5),
    "NaN cost": (1, 0, 10, math.nan),
    "Infinity cost": (1, 0, 10, math.inf),
    "-Infinity cost": (1, 0, 10, -math.inf),
}


def hour() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)


@pytest.mark.parametrize("direct", [False, True], ids=["pgbouncer", "direct"])
@pytest.mark.parametrize("poison", list(POISON), ids=list(POISON))
def test_poisoned_access_element_is_refused_and_the_others_recorded(stack, admin, poison, direct):
    victim, other = uuid.uuid4(), uuid.uuid4()
    h, m, t, c = POISON[poison]
    with connect(stack, "cachesvc_app", direct=direct) as conn, acting_as(conn, None):
        got = conn.execute(ACCESS, ([hour()] * 2, [victim, other], ["chapter"] * 2,
                                    [h, 2], [m, 1], [t, 200], [float(c), 0.25])).fetchone()
    assert got == (1, 1, 0)
    rows = admin.execute(
        "SELECT user_id, hits, misses, tokens_saved, cost_saved_usd::float8 FROM cache_access_stats WHERE user_id IN (%s, %s)",
        (victim, other),
    ).fetchall()
    assert rows == [(other, 2, 1, 200, 0.25)]


def test_refused_elements_of_every_other_kind(app_conn, admin):
    user = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    bad = [  # (bucket, user, content type)
        (now + dt.timedelta(days=2), user, "chapter"),
        (now - dt.timedelta(days=40), user, "chapter"),
        (now, None, "chapter"),
        (now, user, "Chapter"),
        (now, user, "chapter\n"),
        (now, user, "x" * 65),
    ]
    with acting_as(app_conn, None):
        got = app_conn.execute(ACCESS, ([b[0] for b in bad], [b[1] for b in bad], [b[2] for b in bad],
                                        [1] * 6, [0] * 6, [0] * 6, [0.0] * 6)).fetchone()
        # Arrays of different lengths: the missing values are refused, nothing raises.
        ragged = app_conn.execute(ACCESS, ([now, now], [user], ["chapter"], [1], [0], [0], [0])).fetchone()
    assert got == (0, 6, 0) and ragged == (1, 1, 0)
    assert admin.execute("SELECT hits FROM cache_access_stats WHERE user_id = %s", (user,)).fetchall() == [(1,)]


def test_totals_saturate_instead_of_overflowing(app_conn, admin):
    user = uuid.uuid4()
    admin.execute(
        "INSERT INTO cache_access_stats (bucket, user_id, content_type, hits, misses, tokens_saved, cost_saved_usd)"
        " VALUES (%s, %s, 'chapter', %s, %s, %s, 999999999999.5)",
        (hour(), user, BIGINT_MAX - 1, BIGINT_MAX - 1, BIGINT_MAX - 1),
    )
    entry = insert_entry(admin, user)
    admin.execute("UPDATE infinite_pages_cache_partitioned SET hit_count = %s WHERE id = %s", (BIGINT_MAX - 1, entry[0]))
    with acting_as(app_conn, None):
        assert app_conn.execute(ACCESS, ([hour()], [user], ["chapter"], [5], [5], [500], [2.5])).fetchone() == (1, 0, 0)
        assert app_conn.execute(HITS, ([entry[0]], [entry[1]], [5], [entry[1]])).fetchone() == (1, 0)
    assert admin.execute(
        "SELECT hits, misses, tokens_saved, cost_saved_usd::text FROM cache_access_stats WHERE user_id = %s", (user,)
    ).fetchone() == (BIGINT_MAX, BIGINT_MAX, BIGINT_MAX, "999999999999.999999")
    assert admin.execute(
        "SELECT hit_count FROM infinite_pages_cache_partitioned WHERE id = %s", (entry[0],)
    ).fetchone() == (BIGINT_MAX,)


def test_poisoned_hit_elements_are_refused(app_conn, admin):
    user = uuid.uuid4()
    good, victim = insert_entry(admin, user), insert_entry(admin, user)
    now = dt.datetime.now(dt.UTC)
    poison = [(BIGINT_MAX, now), (-3, now), (1, dt.datetime.max.replace(tzinfo=dt.UTC)), (1, None)]
    with acting_as(app_conn, None):
        got = app_conn.execute(HITS, ([good[0]] + [victim[0]] * 4, [good[1]] + [victim[1]] * 4,
                                      [2] + [p[0] for p in poison], [now] + [p[1] for p in poison])).fetchone()
        infinite = app_conn.execute(
            "SELECT refused FROM record_cache_hits(%s::bigint[], %s::timestamptz[], '{1}', '{infinity}')",
            ([victim[0]], [victim[1]]),
        ).fetchone()
    assert got == (1, 4) and infinite == (1,)
    assert admin.execute(
        "SELECT id, hit_count, last_accessed_at IS NOT NULL FROM infinite_pages_cache_partitioned WHERE user_id = %s ORDER BY id",
        (user,),
    ).fetchall() == [(good[0], 2, True), (victim[0], 0, False)]


def test_poison_does_not_stop_other_users_statistics(http, tokens, stack, admin):
    """As a cache_app login: poison a user's hourly row, then both users read through the
    service. Before the fix the service's next flush failed with 'bigint out of range' for
    every user, again at every retry, and a NaN made the victim's costSavedUsd null."""
    victim, other = uuid.uuid4(), uuid.uuid4()
    rejected = metric(http.get("/metrics").text, "cachesvc_counter_rows_rejected_total")
    body = {"content": "x", "tokenCount": 100, "costUsd": 0.5}
    for user in (victim, other):
        assert http.put("/v1/cache/chapter/hot", json=body, headers=as_user(tokens, user)).status_code == 201
    with connect(stack, "cachesvc_app", direct=True) as conn:
        for h, m, t, c in POISON.values():
            with acting_as(conn, None):
                assert conn.execute(ACCESS, ([hour()], [victim], ["chapter"], [h], [m], [t], [c])).fetchone() == (0, 1, 0)
    # A row already at the limit (years of counting): the flush must saturate it, not fail.
    admin.execute(
        "INSERT INTO cache_access_stats (bucket, user_id, content_type, hits, cost_saved_usd)"
        " VALUES (%s, %s, 'chapter', %s, 1) ON CONFLICT (bucket, user_id, content_type) DO UPDATE SET hits = excluded.hits",
        (hour(), victim, BIGINT_MAX - 1),
    )
    for _ in range(3):
        for user in (victim, other):
            assert http.get("/v1/cache/chapter/hot", headers=as_user(tokens, user)).status_code == 200
    stats = wait_until(lambda: (s := http.get("/v1/cache/stats", headers=as_user(tokens, other)).json())["hits"] == 3 and s,
                       10, "the other user's three hits flushed")
    assert stats["costSavedUsd"] == 1.5
    mine = wait_until(lambda: (s := http.get("/v1/cache/stats", headers=as_user(tokens, victim)).json())["hits"] == BIGINT_MAX and s,
                      10, "the victim's hits capped at bigint max")
    assert isinstance(mine["costSavedUsd"], float) and mine["costSavedUsd"] == 2.5
    assert all(t["costSavedUsd"] is not None for t in mine["byContentType"])
    # The row at the limit was saturated, not refused: the service dropped none of these counts.
    assert metric(http.get("/metrics").text, "cachesvc_counter_rows_rejected_total") == rejected


async def _pool(url: str) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(url, kwargs={"prepare_threshold": None}, min_size=1, max_size=1, timeout=2, open=False)
    await pool.open(wait=True)
    return pool


def test_flusher_drops_a_batch_element_the_database_refuses(stack, admin):
    """An element that makes the statement itself fail (an id beyond bigint: 'bigint out of
    range') is split out and dropped; the rest of the batch lands, and nothing is retried."""
    user = uuid.uuid4()
    entry = insert_entry(admin, user)

    async def run() -> tuple[Counters, int]:
        counters = Counters()
        counters.hit(user, "chapter", tuple(entry), 100, 0.5)
        counters.entries[(2**63, entry[1])] = EntryHits(1, dt.datetime.now(dt.UTC))
        pool = await _pool(stack.url("cachesvc_app"))
        try:
            written = await counters.flush(pool)
            assert counters.pending == 0
            assert await counters.flush(pool) == 0  # nothing put back to retry
        finally:
            await pool.close()
        return counters, written

    counters, written = asyncio.run(run())
    assert (written, counters.rejected) == (3, 1)
    assert admin.execute("SELECT hit_count FROM infinite_pages_cache_partitioned WHERE id = %s", (entry[0],)).fetchone() == (1,)
    assert admin.execute("SELECT hits, tokens_saved FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone() == (1, 100)


def test_flusher_keeps_counts_when_the_database_is_unreachable(stack):
    """The other path: a connection failure is no data error; the counts wait for the next flush."""
    user = uuid.uuid4()

    async def run() -> Counters:
        counters = Counters()
        counters.miss(user, "chapter")
        pool = AsyncConnectionPool(stack.url("cachesvc_app").replace(f":{stack.bouncer_port}/", ":1/"),
                                   min_size=1, max_size=1, timeout=1, open=False)
        await pool.open(wait=False)
        try:
            with pytest.raises(Exception):
                await counters.flush(pool)
        finally:
            await pool.close(timeout=0)
        return counters

    counters = asyncio.run(run())
    assert (counters.pending, counters.rejected) == (1, 0)
