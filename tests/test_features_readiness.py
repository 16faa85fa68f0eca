"""Start-up of the feature read path: catalog checks, warm-up, and /readyz until it is warm."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable

import httpx2
import psycopg
import pytest

from cachesvc.db.pools import create_pool, open_pool
from cachesvc.features import catalog, warmup
from cachesvc.features.reader import FeatureReader
from cachesvc.localstack import SUPERUSER
from tests.harness import LiveService, connect, create_table, drop_tables, maintainer, prewarm_stack, wait_until

WARM = "ft_warm"


@pytest.fixture(scope="module")
def stack():
    """This module's stack, on a PostgreSQL with pg_prewarm (tests.harness.prewarm_stack)."""
    with prewarm_stack("cachesvc-readiness-") as s:
        yield s


@pytest.fixture
def warm_table(stack):
    with maintainer(stack) as conn:
        create_table(conn, WARM, "id bigint PRIMARY KEY, v double precision, tag text",
                     ((i, i / 7, f"t{i % 13}") for i in range(1, 5001)))
    yield WARM
    with maintainer(stack) as conn:
        drop_tables(conn, WARM)


def wait_for_status(service: LiveService, status: int, timeout: float = 30):
    return wait_until(service.readyz, timeout, until=lambda res: res.status_code == status,
                      error=lambda res: f"/readyz stayed {res.status_code}: {res.text}", interval=0.1)


def wait_for_features(service: LiveService, until: Callable[[dict], bool], timeout: float = 30) -> dict:
    """/readyz's features section, once ``until`` holds for it."""
    return wait_until(lambda: service.readyz().json()["features"], timeout, until=until, error=lambda features: features,
                      interval=0.1)


# -- readiness ------------------------------------------------------------------------------


def test_readyz_is_503_until_warm_up_is_done(stack, warm_table, start_service):
    """Warm-up blocked on the table's lock: 503 with the reason; once released: 200."""
    with psycopg.connect(stack.url(SUPERUSER)) as blocker:
        blocker.execute(f"LOCK TABLE features.{WARM} IN ACCESS EXCLUSIVE MODE")
        # no latency threshold: readiness here waits on the lock only, not on the machine's speed
        live = start_service(wait="alive", features_tables=WARM, features_warmup_wait_s="0", features_ready_latency_ms="0")
        failed = wait_for_features(live, lambda f: "error" in f)  # warm-up met the lock_timeout at least once
        assert "lock timeout" in failed["error"] and failed["state"] in ("warming", "retrying")
        res = live.readyz()
        assert res.status_code == 503 and res.headers["retry-after"]
        body = res.json()
        assert body["checks"] == {"pool": True, "schema": True}
        assert body["features"]["ready"] is False
        assert body["features"]["state"] in ("warming", "retrying")
        blocker.rollback()  # release the lock
        res = wait_for_status(live, 200)
        features = res.json()["features"]
        assert features["state"] == "done" and features["ready"] is True and features["tables"] == 1
        steps = features["warmup"]["steps"]
        assert steps["prewarm"]["method"] == "pg_prewarm" and steps["prewarm"]["blocks"] > 0
        assert steps["syntheticLookups"]["count"] > 0
        assert features["probe"]["passed"] is True and features["probe"]["hitRatio"] >= 0.9
        live.stop()  # before the blocker's connection closes, as always


def test_readyz_stays_503_while_the_probe_misses_its_threshold(warm_table, start_service):
    live = start_service(wait="alive", features_tables=WARM, features_warmup_wait_s="0", features_ready_latency_ms="0.0001")
    first = wait_for_features(live, lambda f: "probe" in f)["probe"]
    wait_for_features(live, lambda f: f["probe"] != first)  # a second probe has run, and failed again
    res = live.readyz()
    assert res.status_code == 503
    features = res.json()["features"]
    assert features["state"] == "probing" and features["ready"] is False
    assert features["probe"]["passed"] is False
    assert features["probe"]["latencyMs"] > features["probe"]["maxLatencyMs"]


def test_without_warm_up_ready_at_once_and_hot_keys_are_warmed_first(stack, warm_table, start_service):
    with connect(stack, "cachesvc_app", autocommit=True) as app:
        app.execute("SELECT record_feature_hot_keys(ARRAY['11', '12', '13'], ARRAY[5, 5, 5]::bigint[])")
    try:
        cold = start_service(log="cold.log", features_tables=WARM, features_warmup="false")
        res = httpx2.get(cold.url + "/readyz")
        assert res.status_code == 200
        assert res.json()["features"] == {"enabled": False, "state": "disabled", "ready": True, "tables": 1}
        cold.stop()
        warm = start_service(log="warm.log", wait="alive", features_tables=WARM, features_ready_latency_ms="0")
        features = wait_for_status(warm, 200).json()["features"]
        assert features["warmup"]["steps"]["hotKeys"]["count"] >= 3
        warm.stop()  # before the hot keys are deleted
    finally:
        with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as admin:
            admin.execute("DELETE FROM feature_hot_keys WHERE entity_key IN ('11', '12', '13')")


def test_without_pg_prewarm_warm_up_reads_index_pages(stack, warm_table, admin):
    """The fallback: no usable extension -> index-only reads; no sequential scan reads rows."""
    schema = admin.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE extname = 'pg_prewarm'"
    ).fetchone()[0]
    # Direct connections: closing the pool ends their backends, which flushes their statistics.
    settings = stack.settings(database_url=stack.url("cachesvc_app", direct=True), behind_pgbouncer="false")

    def counters():
        admin.execute("SELECT pg_stat_clear_snapshot()")
        return admin.execute(
            "SELECT idx_scan, seq_tup_read FROM pg_stat_user_tables WHERE schemaname = 'features' AND relname = %s", (WARM,)
        ).fetchone()

    async def run():
        pool = create_pool(settings.database)
        await open_pool(pool, settings.database)
        try:
            async with pool.connection() as conn:
                found = await catalog.discover(conn, "features", [WARM])
            return await warmup.prewarm(FeatureReader(pool, found), fraction=0.5)
        finally:
            await pool.close()

    admin.execute(f'REVOKE USAGE ON SCHEMA "{schema}" FROM cache_app')
    try:
        before = counters()
        summary = asyncio.run(run())
    finally:
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO cache_app')
    assert summary["method"] == "index_scan" and summary["tablesInBuffers"] == 1
    after = wait_until(counters, 10, until=lambda after: after[0] >= before[0] + 2, error=lambda after: (before, after),
                       interval=0.2)
    assert after[1] == before[1]
    # and with the extension usable again, it is used
    assert asyncio.run(run())["method"] == "pg_prewarm"


# -- the catalog refuses what it cannot serve ------------------------------------------------


@pytest.mark.parametrize(
    ("ddl", "message"),
    [
        ("a integer, b text", "features.ft_bad has no primary key"),
        ("a integer, b text, PRIMARY KEY (a, b)", "features.ft_bad has a composite primary key (a, b)"),
        ("a numeric PRIMARY KEY, b text", "features.ft_bad: key column a is numeric"),
    ],
)
def test_service_refuses_to_start_on_a_table_it_cannot_serve(stack, start_service, ddl, message):
    with maintainer(stack) as conn:
        create_table(conn, "ft_bad", ddl)
    try:
        with pytest.raises(RuntimeError, match="service exited") as failed:
            start_service(log="svc.log")
        assert message in str(failed.value)
        # An allow-list that leaves the table out serves the others.
        with maintainer(stack) as conn:
            create_table(conn, "ft_fine", "k text PRIMARY KEY, v integer", [("a", 1)])
        start_service(log="allowed.log", features_tables="ft_fine").stop()
    finally:
        with maintainer(stack) as conn:
            drop_tables(conn, "ft_bad", "ft_fine")


def test_catalog_refuses_a_table_the_service_cannot_read_and_an_unknown_allowed_table(stack, admin):
    admin.execute("CREATE TABLE features.ft_foreign (k bigint PRIMARY KEY)")  # owned by the superuser: no grant
    try:
        with connect(stack, "cachesvc_app", autocommit=True) as app:
            with pytest.raises(catalog.CatalogError, match=r"features\.ft_foreign is not readable by the service's role"):
                catalog.discover_sync(app, "features")
            with pytest.raises(catalog.CatalogError, match=r"features\.nowhere is in the allow-list but does not exist"):
                catalog.discover_sync(app, "features", ["nowhere"])
            admin.execute("GRANT SELECT ON features.ft_foreign TO cache_app")
            assert list(catalog.discover_sync(app, "features", ["ft_foreign"]).tables) == ["ft_foreign"]
    finally:
        admin.execute("DROP TABLE features.ft_foreign")


# -- the commands ----------------------------------------------------------------------------


def run_cli(stack, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")} | stack.env() | env
    return subprocess.run([sys.executable, "-m", "cachesvc", *args], env=environ, capture_output=True, text=True, timeout=120)


def test_warmup_and_stats_commands(stack, warm_table, admin):
    result = run_cli(stack, "features", "warmup", CACHESVC_FEATURES_TABLES=WARM, CACHESVC_FEATURES_READY_LATENCY_MS="0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tables"] == [WARM]
    assert report["steps"]["prewarm"]["method"] == "pg_prewarm" and report["steps"]["syntheticLookups"]["count"] > 0
    assert report["probe"]["passed"] is True
    admin.execute(f"SELECT count(*) FROM features.{WARM} WHERE tag = 'x'")  # a sequential scan reading rows
    admin.execute("SELECT pg_stat_force_next_flush()")
    admin.execute("SELECT 1")
    def strict_stats() -> tuple[subprocess.CompletedProcess, list[str]]:
        stats = run_cli(stack, "features", "stats", "--strict")
        return stats, json.loads(stats.stdout)["warnings"]

    def warned(result: tuple[subprocess.CompletedProcess, list[str]]) -> bool:
        return any(w.startswith(f"{WARM}: sequential scans read") for w in result[1])

    stats, warnings = wait_until(strict_stats, 10, until=warned, error=lambda result: result[1], interval=0.3)
    assert stats.returncode == 1 and any(w.startswith(f"{WARM}: sequential scans read") for w in warnings), warnings
    assert f"warning: {WARM}: sequential scans read" in stats.stderr
    assert run_cli(stack, "features", "stats").returncode == 0  # warnings are not failures without --strict


# -- a restart of PostgreSQL while the service runs -------------------------------------------


def table_blocks(stack) -> dict[str, int]:
    """Shared buffer hits and reads of one index scan of every row of the warm table."""
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        conn.execute("SET enable_seqscan = off; SET enable_bitmapscan = off")
        (plan,), = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT * FROM features.{WARM} ORDER BY id").fetchone()
    return {"hit": plan["Plan"]["Shared Hit Blocks"], "read": plan["Plan"]["Shared Read Blocks"]}


def restart_postgres(stack) -> dt.datetime:
    """Stop and start the server (its shared buffers start empty); its new start time."""
    stack.postgres.stop()
    stack.postgres.start()
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def test_after_a_postgres_restart_the_running_service_warms_the_tables_up_again(stack, warm_table, start_service):
    """The service sees the new server start on its own, before any request asks for a feature
    (once the server has answered anything: here /readyz's probe), and runs warm-up again: the
    table's pages are back in the emptied shared buffers, and /readyz stays 200 through it. A
    service with the check off leaves them out."""
    live = start_service(log="watching.log", features_tables=WARM, features_ready_latency_ms="0",
                         features_restart_check_s="0.2")
    before = live.readyz().json()["features"]["restart"]
    assert before["rewarms"] == 0 and before["rewarming"] is False and "last" not in before
    started = restart_postgres(stack)
    assert dt.datetime.fromisoformat(before["serverStartedAt"]) < started
    after = wait_for_features(live, lambda f: f["restart"]["rewarms"] >= 1)
    assert after["ready"] is True and live.readyz().status_code == 200
    assert dt.datetime.fromisoformat(after["restart"]["serverStartedAt"]) == started
    last = after["restart"]["last"]
    assert last["steps"]["prewarm"]["method"] == "pg_prewarm" and last["steps"]["prewarm"]["blocks"] > 0
    assert last["steps"]["syntheticLookups"]["count"] > 0
    blocks = table_blocks(stack)
    assert blocks["read"] == 0 and blocks["hit"] > 0, blocks
    metrics = httpx2.get(live.url + "/metrics").text
    assert "cachesvc_feature_rewarms_total 1.0" in metrics
    live.stop()

    unwatched = start_service(log="unwatched.log", features_tables=WARM, features_ready_latency_ms="0",
                              features_restart_check_s="0")
    restart_postgres(stack)
    time.sleep(1.5)  # seven checks' worth of the service above
    features = unwatched.readyz().json()["features"]
    assert features["restart"]["rewarms"] == 0 and features["ready"] is True
    blocks = table_blocks(stack)
    assert blocks["read"] > 0, blocks  # the pages had to be read: nothing warmed them up
