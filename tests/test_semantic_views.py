"""Semantic hits in the DBA views (migration 0009): user_cache_analytics v3 and
cache_performance_metrics v2 show them apart from exact hits, with a reuse rate counting both;
the views' readers are who they were; and 0009 goes down to 0008 and up again."""

from __future__ import annotations

import contextlib
import random
import uuid

import psycopg
import pytest
from psycopg import errors

from cachesvc import migrations
from tests.harness import acting_as, as_user, connect, http_client, running_service, scratch_database, wait_until

DIM = 8  # this module's own service
VIEWS = ["user_cache_analytics", "cache_performance_metrics"]
# The columns each view had before 0009, in order: they keep their names and places.
OLD_COLUMNS = {
    "user_cache_analytics": [
        "user_id", "entries", "live_entries", "content_types", "total_hit_count", "tokens_stored",
        "cost_stored_usd", "content_bytes", "hits_30d", "misses_30d", "hit_rate_30d", "tokens_saved_30d",
        "cost_saved_usd_30d", "last_write_at", "last_access_at",
    ],
    "cache_performance_metrics": [
        "content_type", "live_entries", "expired_entries", "users", "total_hit_count", "live_tokens",
        "live_cost_usd", "hits_24h", "misses_24h", "hit_rate_24h", "tokens_saved_24h", "cost_saved_usd_24h",
        "last_write_at",
    ],
}
NEW_COLUMNS = {
    "user_cache_analytics": ["semantic_hits_30d", "reuse_rate_30d"],
    "cache_performance_metrics": ["semantic_hits_24h", "reuse_rate_24h"],
}

USER_ROW = ("SELECT hits_30d, misses_30d, semantic_hits_30d, hit_rate_30d, reuse_rate_30d, tokens_saved_30d,"
            " total_hit_count FROM user_cache_analytics WHERE user_id = %s")
TYPE_ROW = ("SELECT hits_24h, misses_24h, semantic_hits_24h, hit_rate_24h, reuse_rate_24h, tokens_saved_24h,"
            " total_hit_count, users FROM cache_performance_metrics WHERE content_type = %s")


@pytest.fixture(scope="module")
def semantic(stack, tmp_path_factory):
    """A service of the module's own on the session's stack: embeddings of DIM numbers,
    counters flushed every 0.2 s."""
    log = tmp_path_factory.mktemp("semantic_views") / "service.log"
    with running_service(stack, log, embedding_dim=str(DIM), flush_interval_s="0.2", rate_limit_per_s="0",
                         similarity_max_distance="0.1") as service:
        yield service


@pytest.fixture
def http(semantic):
    with http_client(semantic) as client:
        yield client


def vector(seed: int) -> list[float]:
    rng = random.Random(seed)
    return [rng.gauss(0, 1) for _ in range(DIM)]


class App:
    """One user of the app, through the real HTTP routes, with a content type of the test's own."""

    def __init__(self, http, tokens, content_type: str) -> None:
        self.user = uuid.uuid4()
        self.http, self.h, self.ct = http, as_user(tokens, self.user), content_type

    def put(self, key: str, embedding: list[float]) -> None:
        res = self.http.put(f"/v1/cache/{self.ct}/{key}", json={"content": {"key": key}, "embedding": embedding,
                                                                 "tokenCount": 100, "costUsd": 0.5}, headers=self.h)
        assert res.status_code in (200, 201), res.text

    def get(self, key: str, expect: int) -> None:
        res = self.http.get(f"/v1/cache/{self.ct}/{key}", headers=self.h)
        assert res.status_code == expect, res.text

    def similar(self, embedding: list[float], found: bool) -> None:
        res = self.http.post(f"/v1/cache/{self.ct}/similar", json={"embedding": embedding}, headers=self.h)
        assert res.status_code == 200, res.text
        assert bool(res.json()["results"]) == found, res.text


def flushed(monitor_conn, query: str, key, expected: tuple) -> tuple:
    """The view's row once the service's counters (access stats and entry hit counts) are flushed."""
    return wait_until(
        lambda: monitor_conn.execute(query, (key,)).fetchone(), 15, f"the counters of {key} to be flushed",
        until=lambda row: row is not None and _numbers(row) == expected,
        error=lambda row: f"{key}: {row} != {expected}",
    )


def _numbers(row) -> tuple:
    return tuple(None if v is None else float(v) for v in row)


@pytest.fixture
def traffic(http, tokens):
    """Two content types of the test's own, and users who GET before they search, as the app does:

    * A (type 1): an exact hit, then a miss made good by a semantic hit, and a search that finds
      nothing (it counts nothing);
    * B (type 1): two misses, one of them made good by a semantic hit;
    * C (type 2): one miss followed by two semantic hits (a search without a GET before it);
    * D (type 2): only a semantic hit, no exact lookup at all.
    """
    suffix = uuid.uuid4().hex[:8]
    ct1, ct2 = f"semv_{suffix}", f"semw_{suffix}"
    a, b, c, d = App(http, tokens, ct1), App(http, tokens, ct1), App(http, tokens, ct2), App(http, tokens, ct2)
    va, vb, vc, vd = vector(1), vector(2), vector(3), vector(4)
    a.put("story", va)
    b.put("story", vb)
    c.put("story", vc)
    d.put("story", vd)

    a.get("story", 200)
    a.get("new-prompt", 404)
    a.similar(va, found=True)
    a.similar([-x for x in va], found=False)

    b.get("new-prompt", 404)
    b.similar(vb, found=True)
    b.get("other-prompt", 404)

    c.get("new-prompt", 404)
    c.similar(vc, found=True)
    c.similar(vc, found=True)

    d.similar(vd, found=True)
    return {"ct1": ct1, "ct2": ct2, "a": a, "b": b, "c": c, "d": d}


# (hits, misses, semantic hits, exact hit rate, reuse rate, tokens saved, entry hit counts)
EXPECTED_USERS = {
    "a": (1, 1, 1, 0.5, 1.0, 200, 2),
    "b": (0, 2, 1, 0.0, 0.5, 100, 1),
    "c": (0, 1, 2, 0.0, 1.0, 200, 2),  # at most 1
    "d": (0, 0, 1, None, None, 100, 1),  # no exact lookup: no rate
}
# ... and users: every user of the content type together.
EXPECTED_TYPES = {
    "ct1": (1, 3, 2, 0.25, 0.75, 300, 3, 2),
    "ct2": (0, 1, 3, 0.0, 1.0, 300, 3, 2),
}


def settled(traffic, monitor_conn) -> None:
    """Until every count of the traffic is flushed and in the views."""
    for name, expected in EXPECTED_USERS.items():
        flushed(monitor_conn, USER_ROW, traffic[name].user, expected)


def test_views_show_semantic_hits_apart_from_exact_hits(traffic, monitor_conn):
    settled(traffic, monitor_conn)
    for name, expected in EXPECTED_TYPES.items():
        flushed(monitor_conn, TYPE_ROW, traffic[name], expected)


def test_the_views_agree_with_each_users_own_statistics(traffic, monitor_conn):
    """What a DBA reads for a user is what that user reads for themself in GET /v1/cache/stats."""
    settled(traffic, monitor_conn)
    for name in EXPECTED_USERS:
        app = traffic[name]
        stats = app.http.get("/v1/cache/stats", headers=app.h).json()
        row = monitor_conn.execute(
            "SELECT hits_30d, misses_30d, semantic_hits_30d, hit_rate_30d, tokens_saved_30d"
            " FROM user_cache_analytics WHERE user_id = %s", (app.user,)).fetchone()
        assert _numbers(row) == _numbers((stats["hits"], stats["misses"], stats["semanticHits"],
                                          stats["hitRate"], stats["tokensSaved"])), name


def test_old_columns_keep_their_places_and_new_ones_come_last(monitor_conn):
    for view in VIEWS:
        cur = monitor_conn.execute(f"SELECT * FROM {view} LIMIT 0")
        assert [c.name for c in cur.description] == OLD_COLUMNS[view] + NEW_COLUMNS[view]


# -- who may read them ---------------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS)
def test_the_service_role_still_cannot_read_the_views(traffic, stack, view):
    """cache_app (the login the service uses for every user) is refused the view outright,
    acting as a user with semantic hits or as nobody."""
    with connect(stack, "cachesvc_app") as conn:
        for user in (traffic["a"].user, None):
            with pytest.raises(errors.InsufficientPrivilege):
                with acting_as(conn, user):
                    conn.execute(f"SELECT semantic_hits_{'30d' if view == 'user_cache_analytics' else '24h'}"
                                 f" FROM {view}")


@pytest.mark.parametrize("view", VIEWS)
def test_a_role_granted_nothing_cannot_read_the_views(admin, view):
    role = "semv_nobody_" + uuid.uuid4().hex[:8]
    admin.execute(f"CREATE ROLE {role} NOLOGIN")
    try:
        with pytest.raises(errors.InsufficientPrivilege):
            with admin.transaction():
                admin.execute(f"SET LOCAL ROLE {role}")
                admin.execute(f"SELECT * FROM {view}")
        # The control: the same path as cache_monitor reads it.
        with admin.transaction():
            admin.execute("SET LOCAL ROLE cache_monitor")
            admin.execute(f"SELECT * FROM {view}").fetchall()
    finally:
        admin.execute(f"DROP ROLE {role}")


def test_monitor_reads_semantic_hits_only_through_the_views(traffic, monitor_conn):
    settled(traffic, monitor_conn)
    with pytest.raises(errors.InsufficientPrivilege):
        monitor_conn.execute("SELECT semantic_hits FROM cache_access_stats")


def test_grants_owner_and_options_of_the_views(admin):
    for view in VIEWS:
        owner, options, acl = admin.execute(
            "SELECT relowner::regrole::text, reloptions, relacl::text[] FROM pg_class WHERE oid = %s::regclass",
            (view,)).fetchone()
        assert owner == "cache_maintainer" and options is None
        granted = {entry.split("=")[0] for entry in acl}
        assert granted == {"cache_maintainer", "cache_monitor"}, acl
        assert "cache_monitor=r/cache_maintainer" in acl


def test_a_user_sees_only_their_own_semantic_hits(traffic, stack, http, monitor_conn):
    """The per-user figures a user can reach (GET /v1/cache/stats, and cache_access_stats under
    row-level security as the service's role) hold none of another user's semantic hits."""
    settled(traffic, monitor_conn)
    a, b = traffic["a"], traffic["b"]
    for app in (a, b):
        stats = http.get("/v1/cache/stats", headers=app.h).json()
        assert [s["contentType"] for s in stats["byContentType"]] == [app.ct]
        assert stats["semanticHits"] == 1 and stats["misses"] == (1 if app is a else 2)
        with connect(stack, "cachesvc_app") as conn:
            with acting_as(conn, app.user):
                rows = conn.execute("SELECT user_id, sum(semantic_hits) FROM cache_access_stats"
                                    " WHERE user_id IN (%s, %s) GROUP BY user_id", (a.user, b.user)).fetchall()
            assert rows == [(app.user, 1)]
            with acting_as(conn, None):
                assert conn.execute("SELECT count(*) FROM cache_access_stats").fetchone() == (0,)


# -- the migration ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_db(stack):
    with scratch_database(stack, "cachesvc_semantic_views") as url:
        yield url


def view_state(url: str) -> dict:
    """Per view: its columns, owner, options and grants; and whether cache_monitor can read it and
    cache_app cannot."""
    state = {}
    with psycopg.connect(url, autocommit=True) as conn:
        for view in VIEWS:
            columns = [r[0] for r in conn.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped"
                " ORDER BY attnum", (view,))]
            meta = conn.execute("SELECT relowner::regrole::text, reloptions, relacl::text[] FROM pg_class"
                                " WHERE oid = %s::regclass", (view,)).fetchone()
            with conn.transaction():
                conn.execute("SET LOCAL ROLE cache_monitor")
                conn.execute(f"SELECT * FROM {view}").fetchall()
            with pytest.raises(errors.InsufficientPrivilege), conn.transaction():
                conn.execute("SET LOCAL ROLE cache_app")
                conn.execute(f"SELECT * FROM {view}")
            state[view] = {"columns": columns, "owner": meta[0], "options": meta[1], "acl": sorted(meta[2])}
    return state


def test_downgrade_to_0008_and_upgrade_again(fresh_db):
    url = fresh_db
    user = uuid.uuid4()
    migrations.upgrade(url, "0008")
    before = view_state(url)
    for view in VIEWS:
        assert before[view]["columns"] == OLD_COLUMNS[view]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO cache_access_stats (bucket, user_id, content_type, hits, misses, semantic_hits)"
            " VALUES (date_trunc('hour', now()), %s, 'chapter', 1, 3, 2)", (user,))

    def figures() -> tuple:
        with psycopg.connect(url, autocommit=True) as conn:
            per_user = conn.execute("SELECT semantic_hits_30d, hit_rate_30d, reuse_rate_30d FROM user_cache_analytics"
                                    " WHERE user_id = %s", (user,)).fetchone()
            per_type = conn.execute("SELECT semantic_hits_24h, hit_rate_24h, reuse_rate_24h"
                                    " FROM cache_performance_metrics WHERE content_type = 'chapter'").fetchone()
        return _numbers(per_user), _numbers(per_type)

    for _ in range(2):
        migrations.upgrade(url, "0009")
        after = view_state(url)
        for view in VIEWS:
            assert after[view]["columns"] == OLD_COLUMNS[view] + NEW_COLUMNS[view]
            assert {k: v for k, v in after[view].items() if k != "columns"} == \
                   {k: v for k, v in before[view].items() if k != "columns"}
        assert figures() == ((2, 0.25, 0.75), (2, 0.25, 0.75))

        migrations.downgrade(url, "0008")
        assert view_state(url) == before
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0008",)
            assert conn.execute("SELECT hits_30d, misses_30d FROM user_cache_analytics WHERE user_id = %s",
                                (user,)).fetchone() == (1, 3)
            with pytest.raises(errors.UndefinedColumn), conn.transaction():
                conn.execute("SELECT semantic_hits_30d FROM user_cache_analytics")
    migrations.upgrade(url)  # and on to head, whatever comes after 0009
    with contextlib.closing(psycopg.connect(url, autocommit=True)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == migrations.head_revision()
