"""Scale-out: service processes reading from a real hot standby of the real primary.

A stack of this module's own: PostgreSQL, a standby made by ``pg_basebackup -R`` that streams
from it, and a PgBouncer in front of each. Which server answered a read is shown by a marker
that cannot appear by accident: with replay paused on the standby, a row is changed on the
primary, so the old value can only come from the standby and the new one only from the
primary. Three service processes watch the same pair:

- ``tolerant_a`` and ``tolerant_b``: replica lag bound (and window) 30 s, so a paused standby
  stays in use for the length of a test;
- ``strict``: lag bound 0.4 s, so the same paused standby is skipped within half a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx2
import psycopg
import pytest
from psycopg import errors

from cachesvc.localstack import SUPERUSER, LocalStack
from cachesvc.db.lsn import parse_lsn
from tests.harness import (LiveService, acting_as, create_table, insert_entry, maintainer, metric, metric_samples, metric_sum,
                           running_service, service_headers, throwaway_stack, token_maker, wait_until)

MARKER_TABLE = "scale_marker"
TOLERANT = {"replica_max_lag_s": 30, "read_your_writes_s": 30, "replica_check_interval_s": 0.2}
STRICT = {"replica_max_lag_s": 0.4, "read_your_writes_s": 0.5, "replica_check_interval_s": 0.1}
COMMON = {
    "pool_size": 3, "read_pool_size": 3, "replica_timeout_s": 0.5, "flush_interval_s": 0.2,
    "rate_limit_per_s": 0, "request_timeout_s": 3,
}


@pytest.fixture(scope="module")
def pair() -> Iterator[LocalStack]:
    """Primary + hot standby, each behind its PgBouncer; one feature table to mark reads."""
    with throwaway_stack("cachesvc-scale-") as s:
        with maintainer(s) as conn:
            create_table(conn, MARKER_TABLE, "entity_key bigint PRIMARY KEY, v text", [(1, "before"), (2, "other")])
        s.start_standby()
        s.standby.wait_replayed(s.postgres)
        yield s


@pytest.fixture(scope="module")
def tokens(pair):
    """Tokens for this module's own stack (its secret is not the session stack's)."""
    return token_maker(pair)


@pytest.fixture(scope="module")
def services(pair, tmp_path_factory) -> Iterator[dict[str, LiveService]]:
    logs = tmp_path_factory.mktemp("scale-services")
    with contextlib.ExitStack() as running:
        started = {name: running.enter_context(running_service(pair, logs / f"{name}.log", **(COMMON | settings)))
                   for name, settings in (("tolerant_a", TOLERANT), ("tolerant_b", TOLERANT), ("strict", STRICT))}
        for service in started.values():
            wait_replica(service, "ok")
        yield started


# -- helpers -------------------------------------------------------------------------------


def readyz(service: LiveService) -> httpx2.Response:
    return httpx2.get(service.url + "/readyz", timeout=5)


def wait_replica(service: LiveService, state: str, timeout: float = 20) -> dict:
    """Until /readyz reports the replica in ``state`` (and, when ok, its feature tables warm)."""
    def reached() -> bool:
        replica = readyz(service).json()["replica"]
        return replica["state"] == state and (state != "ok" or replica["featuresWarm"])

    wait_until(reached, timeout, f"replica state {state!r} at {service.url}")
    return readyz(service).json()["replica"]


@contextlib.contextmanager
def replay_paused(stack: LocalStack) -> Iterator[None]:
    """Replay paused on the standby (it keeps receiving WAL, and keeps answering reads)."""
    stack.standby.wait_replayed(stack.postgres)
    with psycopg.connect(stack.url(SUPERUSER, standby=True), autocommit=True) as conn:
        conn.execute("SELECT pg_wal_replay_pause()")
        wait_until(lambda: conn.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] == "paused",
                   what="replay paused")
        try:
            yield
        finally:
            conn.execute("SELECT pg_wal_replay_resume()")
    stack.standby.wait_replayed(stack.postgres)


def headers(tokens, user: uuid.UUID, token: str | None = None) -> dict[str, str]:
    h = {"Authorization": f"Bearer {tokens(user)}"}
    if token:
        h["X-Consistency-Token"] = token
    return h


def get(service: LiveService, tokens, user: uuid.UUID, key: str, token: str | None = None) -> httpx2.Response:
    return httpx2.get(f"{service.url}/v1/cache/chapter/{key}", headers=headers(tokens, user, token), timeout=10)


def put(service: LiveService, tokens, user: uuid.UUID, key: str, content) -> httpx2.Response:
    res = httpx2.put(f"{service.url}/v1/cache/chapter/{key}", json={"content": content},
                     headers=headers(tokens, user), timeout=10)
    assert res.status_code in (200, 201), res.text
    return res


def feature_value(service: LiveService, tokens, key: int = 1) -> str:
    res = httpx2.get(f"{service.url}/v1/features/{key}?tables={MARKER_TABLE}", headers=service_headers(tokens), timeout=10)
    assert res.status_code == 200, res.text
    return res.json()["features"][MARKER_TABLE]["v"]


def routed(service: LiveService, target: str, reason: str, *, missing_ok: bool = False) -> float:
    """Reads the service sent to ``target`` for ``reason`` (``missing_ok``: for a reading before)."""
    return metric(service, "cachesvc_read_routes_total", {"target": target, "reason": reason}, missing_ok=missing_ok)


def set_marker(stack: LocalStack, value: str) -> None:
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        conn.execute(f"UPDATE features.{MARKER_TABLE} SET v = %s WHERE entity_key = 1", (value,))


# -- the harness -------------------------------------------------------------------------


def test_the_standby_is_a_read_only_streaming_replica_of_the_primary(pair):
    with psycopg.connect(pair.url(SUPERUSER, standby=True), autocommit=True) as standby:
        assert standby.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
        with pytest.raises(errors.ReadOnlySqlTransaction):
            standby.execute("CREATE TABLE not_here (x int)")
        with psycopg.connect(pair.url(SUPERUSER), autocommit=True) as primary:
            assert primary.execute("SELECT pg_is_in_recovery()").fetchone() == (False,)
            (streaming,) = primary.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'").fetchone()
            assert streaming == 1
            primary_id = primary.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
            # It streams as a REPLICATION-only login, not as the superuser.
            (who,) = primary.execute("SELECT usename FROM pg_stat_replication").fetchone()
            assert who == "cachesvc_replicator"
            attributes = primary.execute("SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = %s", (who,))
            assert attributes.fetchone() == (False, True)
        assert standby.execute("SELECT system_identifier FROM pg_control_system()").fetchone() == primary_id


def test_the_replication_runbook_query_shows_the_standby(pair):
    from cachesvc.migrations import PROJECT_ROOT

    check = PROJECT_ROOT / "sql" / "checks" / "replication.sql"
    result = subprocess.run(
        ["psql", pair.url("cachesvc_monitor", direct=True), "-X", "-A", "-v", "ON_ERROR_STOP=1", "-f", str(check)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.startswith("application_name|client_addr|usename|state")
    assert "|cachesvc_replicator|streaming|async|" in row  # a monitor login sees every column


# -- routing -------------------------------------------------------------------------------


def test_feature_reads_are_served_by_the_standby_and_a_lagging_one_is_skipped(pair, services, tokens):
    tolerant, strict = services["tolerant_a"], services["strict"]
    assert feature_value(tolerant, tokens) == feature_value(strict, tokens) == "before"
    served_before = routed(tolerant, "replica", "replica_ok", missing_ok=True)
    lagging_before = routed(strict, "primary", "replica_lagging", missing_ok=True)
    with replay_paused(pair):
        set_marker(pair, "after")  # on the primary only, while the standby does not replay
        # The old value exists only on the standby: the tolerant service read it there.
        assert feature_value(tolerant, tokens) == "before"
        # The strict one sees the standby fall behind its 0.4 s bound and reads the primary.
        lagging = wait_replica(strict, "lagging", timeout=5)
        assert lagging["stalenessSeconds"] > 0.4 and lagging["lagSeconds"] > 0 and lagging["lagBytes"] > 0
        assert feature_value(strict, tokens) == "after"
        assert readyz(strict).status_code == 200  # a lagging replica never makes the service unready
        assert routed(strict, "primary", "replica_lagging") >= lagging_before + 1
        assert metric(strict, "cachesvc_replica_usable") == 0
    assert routed(tolerant, "replica", "replica_ok") >= served_before + 1
    wait_replica(tolerant, "ok")
    assert feature_value(tolerant, tokens) == "after"  # replay resumed: the standby has it now
    wait_replica(strict, "ok")
    set_marker(pair, "before")


@pytest.mark.timing
def test_cache_reads_window_token_and_lag_bound(pair, services, tokens):
    """With replay paused: the writer's own process reads its write (window); another process
    reads the standby's older entry, unless it is given the write's consistency token; a
    process whose bound the standby exceeds reads the primary."""
    a, b, strict = services["tolerant_a"], services["tolerant_b"], services["strict"]
    user, key = uuid.uuid4(), "story/ch-1"
    by_token_before = routed(a, "primary", "consistency_token", missing_ok=True)
    recent_before = routed(b, "primary", "recent_write", missing_ok=True)
    put(b, tokens, user, key, "v1")
    pair.standby.wait_replayed(pair.postgres)
    time.sleep(0.6)  # past the strict process's window (it wrote nothing anyway)
    with replay_paused(pair):
        v2 = put(b, tokens, user, key, "v2")
        token = v2.headers["x-consistency-token"]
        assert re.fullmatch(r"[0-9A-F]+/[0-9A-F]+", token)
        assert get(b, tokens, user, key).json()["content"] == "v2"  # the writer's process: its window
        assert get(a, tokens, user, key).json()["content"] == "v1"  # another process: the standby, stale
        lookup = httpx2.post(f"{a.url}/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": key}]},
                             headers=headers(tokens, user), timeout=10)
        assert lookup.json()["results"][0]["entry"]["content"] == "v1"
        assert get(a, tokens, user, key, token).json()["content"] == "v2"  # with the token: the primary
        lookup = httpx2.post(f"{a.url}/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": key}]},
                             headers=headers(tokens, user, token), timeout=10)
        assert lookup.json()["results"][0]["entry"]["content"] == "v2"
        assert routed(a, "primary", "consistency_token") == by_token_before + 2  # the GET and the lookup
        wait_replica(strict, "lagging", timeout=5)
        assert get(strict, tokens, user, key).json()["content"] == "v2"  # outside any window: the bound
    wait_until(lambda: parse_lsn(readyz(a).json()["replica"]["replayLsn"]) >= parse_lsn(token), 5, "replay seen")
    assert get(a, tokens, user, key).json()["content"] == "v2"
    on_replica = routed(a, "replica", "replica_ok")
    by_token = routed(a, "primary", "consistency_token")
    assert get(a, tokens, user, key, token).json()["content"] == "v2"  # the standby has reached the token
    assert routed(a, "replica", "replica_ok") == on_replica + 1
    assert routed(a, "primary", "consistency_token") == by_token
    assert routed(b, "primary", "recent_write") >= recent_before + 1


def test_a_malformed_consistency_token_is_refused(services, tokens):
    res = get(services["tolerant_a"], tokens, uuid.uuid4(), "k", token="not-a-position")
    assert res.status_code == 400
    assert res.json()["error"]["field"] == "X-Consistency-Token"


@pytest.mark.timing
def test_delete_and_erase_answer_with_a_token_that_later_reads_respect(pair, services, tokens):
    a, b = services["tolerant_a"], services["tolerant_b"]
    user = uuid.uuid4()
    put(a, tokens, user, "gone", "x")
    put(a, tokens, user, "erased", "y")
    pair.standby.wait_replayed(pair.postgres)
    with replay_paused(pair):
        deleted = httpx2.delete(f"{a.url}/v1/cache/chapter/gone", headers=headers(tokens, user), timeout=10)
        assert deleted.status_code == 204
        assert get(b, tokens, user, "gone").status_code == 200  # stale standby: the limitation
        assert get(b, tokens, user, "gone", deleted.headers["x-consistency-token"]).status_code == 404
        erased = httpx2.delete(f"{a.url}/v1/cache", headers=headers(tokens, user), timeout=10)
        assert erased.status_code == 200 and erased.json() == {"deleted": 1}
        assert get(b, tokens, user, "erased", erased.headers["x-consistency-token"]).status_code == 404
        assert get(a, tokens, user, "erased").status_code == 404  # the erasing process: its window


# -- the replica fails ---------------------------------------------------------------------


def read_everything(service: LiveService, tokens, user: uuid.UUID, key: str, expected: str) -> list[float]:
    """A GET, a lookup and a feature lookup: each must answer correctly; returns their times."""
    times = []
    for _ in range(3):
        started = time.monotonic()
        assert get(service, tokens, user, key).json()["content"] == expected
        lookup = httpx2.post(f"{service.url}/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": key}]},
                             headers=headers(tokens, user), timeout=10)
        assert lookup.status_code == 200 and lookup.json()["results"][0]["entry"]["content"] == expected
        assert feature_value(service, tokens, 2) == "other"
        times.append(time.monotonic() - started)
    return times


@pytest.mark.parametrize("what", ["pgbouncer", "postgres"])
def test_reads_fall_back_to_the_primary_while_the_standby_is_down(pair, services, tokens, what):
    a = services["tolerant_a"]
    user, key = uuid.uuid4(), "fallback"
    put(services["tolerant_b"], tokens, user, key, "present")
    pair.standby.wait_replayed(pair.postgres)
    read_everything(a, tokens, user, key, "present")
    down_before = routed(a, "primary", "replica_down", missing_ok=True)
    server = pair.standby.bouncer if what == "pgbouncer" else pair.standby.postgres
    server.stop()
    try:
        times = read_everything(a, tokens, user, key, "present")  # no error reaches the client
        # The first read may wait for the replica up to replica_timeout_s (0.5 s); the rest skip it.
        assert max(times[1:]) < 1.0, times
        down = wait_replica(a, "down", timeout=5)
        assert down["usable"] is False and down["error"]
        ready = readyz(a)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert routed(a, "primary", "replica_down") >= down_before + 1
    finally:
        server.start()
    wait_replica(a, "ok")  # checked again, and (after a restart) its feature tables warmed again
    before = routed(a, "replica", "replica_ok", missing_ok=True)
    read_everything(a, tokens, user, key, "present")
    assert routed(a, "replica", "replica_ok") >= before + 9


# -- stateless processes ------------------------------------------------------------------


@pytest.mark.timing
def test_two_processes_counting_hits_on_one_entry_add_up(pair, services, tokens):
    a, b = services["tolerant_a"], services["tolerant_b"]
    user, key = uuid.uuid4(), "counted"
    put(a, tokens, user, key, "hit me")
    pair.standby.wait_replayed(pair.postgres)
    plan = [a] * 7 + [b] * 5
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        codes = list(pool.map(lambda svc: get(svc, tokens, user, key).status_code, plan))
    assert codes == [200] * 12
    miss = [get(svc, tokens, user, "absent").status_code for svc in (a, b, b)]
    assert miss == [404] * 3

    def flushed() -> bool:
        with psycopg.connect(pair.url(SUPERUSER), autocommit=True) as conn:
            (hits,) = conn.execute(
                "SELECT hit_count FROM infinite_pages_cache_partitioned WHERE user_id = %s AND cache_key = %s",
                (user, key)).fetchone()
            stats = conn.execute(
                "SELECT sum(hits), sum(misses) FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone()
        return hits == 12 and stats == (12, 3)

    wait_until(flushed, 10, "both processes' counters flushed and summed")
    flushes = [metric(svc, "cachesvc_counter_flushes_total", {"outcome": "ok"}) for svc in (a, b)]
    wait_until(lambda: all(metric(svc, "cachesvc_counter_flushes_total", {"outcome": "ok"}) >= done + 2
                           for svc, done in zip((a, b), flushes)), 10, "two more flushes of each process")
    assert flushed()  # still exactly the sum: nothing counted twice
    # Either process now answers the same entry and count (after the flushes replay).
    pair.standby.wait_replayed(pair.postgres)
    entries = [get(svc, tokens, user, key).json() for svc in (a, b)]
    assert entries[0]["content"] == entries[1]["content"] == "hit me"
    assert entries[0]["hitCount"] >= 12 and entries[1]["hitCount"] >= 12


# -- security ------------------------------------------------------------------------------


def test_row_level_security_holds_on_the_standby(pair):
    owner, other = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(pair.url(SUPERUSER), autocommit=True) as admin:
        insert_entry(admin, owner, key="secret")
        (partition,) = admin.execute(
            "SELECT tableoid::regclass::text FROM infinite_pages_cache_partitioned WHERE user_id = %s", (owner,)).fetchone()
    pair.standby.wait_replayed(pair.postgres)
    query = "SELECT user_id FROM infinite_pages_cache_partitioned WHERE cache_key = 'secret'"
    with psycopg.connect(pair.url("cachesvc_app", standby=True), prepare_threshold=None) as conn:
        with acting_as(conn, other):
            assert conn.execute(query).fetchall() == []  # another user sees nothing
        with acting_as(conn, None):
            assert conn.execute(query).fetchall() == []  # no user: nothing
        with conn.transaction():  # a coalesced read of the other user only
            conn.execute("SELECT set_config('cachesvc.user_ids', %s, true)", (str(other),))
            assert conn.execute(query).fetchall() == []
        with conn.transaction():  # a batch that includes the owner
            conn.execute("SELECT set_config('cachesvc.user_ids', %s, true)", (f"{other},{owner}",))
            assert conn.execute(query).fetchall() == [(owner,)]
        with acting_as(conn, owner):
            assert conn.execute(query).fetchall() == [(owner,)]
        with pytest.raises(errors.InsufficientPrivilege):
            with acting_as(conn, owner):
                conn.execute(f"SELECT * FROM {partition}")  # a partition named directly
        with pytest.raises(errors.ReadOnlySqlTransaction):
            with acting_as(conn, owner):
                insert_entry(conn, owner)


def test_coalesced_reads_on_the_replica_never_cross_users(pair, services, tokens):
    a, b = services["tolerant_a"], services["tolerant_b"]
    users = [uuid.uuid4() for _ in range(6)]
    for user in users:  # written through b, so that a reads them from the standby
        put(b, tokens, user, "shared-key", f"content of {user}")
    put(b, tokens, users[0], "only-first", "first's")
    pair.standby.wait_replayed(pair.postgres)
    before = routed(a, "replica", "replica_ok", missing_ok=True)
    coalesced = metric(a, "cachesvc_reads_coalesced_total")
    fallbacks = metric_sum(a, "cachesvc_replica_fallbacks_total")  # one sample per failure kind
    plan = [users[i % len(users)] for i in range(60)]

    async def read_all() -> list[tuple[uuid.UUID, str]]:
        async with httpx2.AsyncClient(base_url=a.url, timeout=10) as http:
            async def read(user: uuid.UUID) -> tuple[uuid.UUID, str]:
                res = await http.get("/v1/cache/chapter/shared-key", headers=headers(tokens, user))
                return user, res.json()["content"]

            return await asyncio.gather(*(read(u) for u in plan))

    answers = asyncio.run(read_all())
    assert all(content == f"content of {user}" for user, content in answers)
    assert routed(a, "replica", "replica_ok") >= before + 60
    assert metric(a, "cachesvc_reads_coalesced_total") > coalesced  # users shared batches on the replica
    # The forbidden path: another user asks for the first user's key, on the replica too.
    assert get(a, tokens, users[0], "only-first").json()["content"] == "first's"
    for user in users[1:]:
        assert get(a, tokens, user, "only-first").status_code == 404
    assert metric_sum(a, "cachesvc_replica_fallbacks_total") == fallbacks  # none of these reads was redone


@pytest.mark.timing
def test_writes_never_go_to_the_standby(pair, services, tokens):
    """Every write, counter and hot-key flush of a replica-reading service lands on the primary;
    the standby's log would show any write attempted there, as the forbidden path proves."""
    a = services["tolerant_a"]
    log = pair.standby.postgres.logfile
    offset = log.stat().st_size
    user = uuid.uuid4()
    put(a, tokens, user, "w1", "one")
    assert httpx2.put(f"{a.url}/v1/cache/chapter/w1", json={"content": "two"},
                      headers=headers(tokens, user), timeout=10).status_code == 200
    assert get(a, tokens, user, "w1").status_code == 200  # in the writer's window: on the primary
    other = uuid.uuid4()
    put(services["tolerant_b"], tokens, other, "w2", "three")
    pair.standby.wait_replayed(pair.postgres)
    assert get(a, tokens, other, "w2").status_code == 200  # read on the standby: a hit to flush
    feature_value(a, tokens)  # a hot key to flush
    assert httpx2.delete(f"{a.url}/v1/cache/chapter/w1", headers=headers(tokens, user), timeout=10).status_code == 204
    assert httpx2.delete(f"{a.url}/v1/cache", headers=headers(tokens, other), timeout=10).status_code == 200
    assert httpx2.get(f"{a.url}/v1/cache/stats", headers=headers(tokens, user), timeout=10).status_code == 200
    time.sleep(0.6)  # a few counter and hot-key flushes
    with psycopg.connect(pair.url(SUPERUSER), autocommit=True) as primary:
        actions = [r[0] for r in primary.execute(
            "SELECT action FROM cache_audit_log WHERE user_id IN (%s, %s) ORDER BY id", (user, other))]
    assert actions == ["put", "put", "put", "delete", "erase"]
    assert "read-only transaction" not in log.read_text(errors="replace")[offset:]
    # The forbidden path: a write sent to the standby is refused, and its log says so.
    with psycopg.connect(pair.url("cachesvc_app", standby=True), prepare_threshold=None) as conn:
        with pytest.raises(errors.ReadOnlySqlTransaction):
            with acting_as(conn, user):
                conn.execute("SELECT record_cache_hits('{1}', ARRAY[now()], '{1}', ARRAY[now()])")
    wait_until(lambda: "read-only transaction" in log.read_text(errors="replace")[offset:], 5, "the refusal logged")


# -- readiness, metrics, misconfiguration ------------------------------------------------------


def test_readiness_and_metrics_report_both_pools_and_the_lag(services):
    a = services["tolerant_a"]
    body = readyz(a).json()
    assert body["status"] == "ready"
    replica = body["replica"]
    assert replica["configured"] is True and replica["state"] == "ok" and replica["usable"] is True
    assert replica["lagSeconds"] is not None and replica["lagBytes"] is not None and replica["maxLagSeconds"] == 30
    assert set(body["pools"]) == {"primary", "replica"}
    assert body["pools"]["replica"]["max"] == 3
    text = httpx2.get(a.url + "/metrics", timeout=5).text
    assert 0 < metric(text, "cachesvc_pool_size", {"pool": "primary"}) <= 3
    assert 0 < metric(text, "cachesvc_pool_size", {"pool": "replica"}) <= 3
    assert metric(text, "cachesvc_pool_max", {"pool": "replica"}) == 3
    assert metric(text, "cachesvc_replica_usable") == 1
    assert metric(text, "cachesvc_replica_lag_seconds") >= 0 and metric(text, "cachesvc_replica_lag_bytes") >= 0
    assert 0 <= metric(text, "cachesvc_replica_staleness_seconds") < 30


def test_without_a_replica_every_read_goes_to_the_primary(pair, tokens, start_service):
    service = start_service(pair, read_database_url="", rate_limit_per_s=0)
    body = readyz(service).json()
    assert body["replica"] == {"configured": False} and set(body["pools"]) == {"primary"}
    user = uuid.uuid4()
    put(service, tokens, user, "k", "plain")
    assert get(service, tokens, user, "k").json()["content"] == "plain"
    text = httpx2.get(service.url + "/metrics", timeout=5).text
    assert [dict(labels) for labels in metric_samples(text, "cachesvc_pool_size")] == [{"pool": "primary"}]
    for name in ("cachesvc_replica_lag_seconds", "cachesvc_replica_usable", "cachesvc_read_routes_total"):
        assert metric_samples(text, name) == {}, name  # declared for dashboards, never a sample without a replica


def test_a_replica_that_is_not_a_standby_or_not_there_is_never_used(pair, tokens, start_service):
    """A read DSN naming the primary itself, or a port nobody listens on: the service starts,
    is ready, reads the primary, and says why."""
    from cachesvc.localstack import free_port

    user = uuid.uuid4()
    cases = {
        "not_a_standby": pair.url("cachesvc_app"),
        "down": f"postgresql://cachesvc_app:x@127.0.0.1:{free_port()}/cachesvc",
    }
    for state, url in cases.items():
        service = start_service(pair, log=f"{state}.log", read_database_url=url, rate_limit_per_s=0,
                                replica_timeout_s=0.5, replica_check_interval_s=0.2, startup_attempts=1)
        replica = wait_replica(service, state, timeout=5)
        assert replica["usable"] is False
        put(service, tokens, user, state, state)
        assert get(service, tokens, user, state).json()["content"] == state
        assert readyz(service).status_code == 200
        assert routed(service, "primary", f"replica_{state}") >= 1  # the GET, and why
        targets = {dict(labels)["target"] for labels in metric_samples(service, "cachesvc_read_routes_total")}
        assert targets == {"primary"}
        service.stop()  # one at a time
