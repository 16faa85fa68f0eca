"""Coalesced feature lookups (cachesvc.features.service on cachesvc.db.batcher), on the real stack.

One read lane and two pooled connections make coalescing the common case: while one batch
runs, every lookup queues for the next, and the lookups of the same set of tables share it.
Each row names its table and its key (``owner``), and keys are chosen to mean different rows
in different tables (``007`` is row 7 of an integer-keyed table and the string ``007`` of a
text-keyed one), beside misses and duplicates: a row handed to the wrong lookup, or to the
wrong position of the right one, shows as an answer that differs from the same request asked
alone of a service that does not coalesce.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx2
import psycopg
import pytest

from cachesvc.db.errors import DatabaseTimeout
from cachesvc.db.pools import create_pool, open_pool
from cachesvc.db.transaction import Transactions, start_budget
from cachesvc.features.reader import MAX_KEYS
from cachesvc.features.service import BATCH_MAX_KEYS, FeatureService
from cachesvc.localstack import SUPERUSER
from tests.harness import (CheckedThread, create_table, drop_tables, join_all, maintainer, metric, raise_failures,
                           running_service, service_headers, wait_until)

INTS, NAMES, DEVICES, SMALL = "fc_ints", "fc_names", "fc_devices", "fc_small"
GEN, STEADY = "fc_generations", "fc_steady"
DATA_TABLES = [INTS, NAMES, DEVICES, SMALL]
SERVED = [*DATA_TABLES, GEN, STEADY]
TABLE_SETS = [None, [INTS], [NAMES, SMALL], [SMALL, NAMES], [DEVICES, INTS, NAMES], [SMALL], [NAMES, INTS]]
GEN_KEYS = 1000
REQUESTS = 400
IN_FLIGHT = 64
COALESCED = "cachesvc_feature_lookups_coalesced_total"
BATCHES = "cachesvc_feature_batches_total"


# -- data ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def feature_keys(stack):
    rng = random.Random(20261124)
    ints = rng.sample(range(1, 10**12), 200) + [7, 2**62]
    names = [f"name {i} ✓" for i in range(150)] + ["7", "007", "team/with slash", "-0"]
    devices = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(80)]
    small = rng.sample(range(-500, 5000), 150) + [7, 0]
    with maintainer(stack) as conn:
        create_table(conn, INTS, "entity_key bigint PRIMARY KEY, owner text NOT NULL, n numeric",
                     [(k, f"{INTS}:{k}", rng.randint(0, 10**6)) for k in ints])
        create_table(conn, NAMES, "name varchar(80) PRIMARY KEY, owner text NOT NULL",
                     [(k, f"{NAMES}:{k}") for k in names])
        create_table(conn, DEVICES, "id uuid PRIMARY KEY, owner text NOT NULL", [(k, f"{DEVICES}:{k}") for k in devices])
        create_table(conn, SMALL, "k integer PRIMARY KEY, owner text NOT NULL", [(k, f"{SMALL}:{k}") for k in set(small)])
        create_table(conn, GEN, "id integer PRIMARY KEY, v integer NOT NULL, note text",
                     ((k, 1, f"generation 1, row {k}") for k in range(1, GEN_KEYS + 1)))
        create_table(conn, STEADY, "id integer PRIMARY KEY, w integer", ((k, k) for k in range(1, GEN_KEYS + 1)))
    keys = [str(k) for k in ints] + names + [str(d) for d in devices] + [str(k) for k in small]
    keys += [str(devices[0]).upper(), "007", "-0", "0", "abc", str(uuid.uuid4()), "9223372036854775808", "no-such-entity"]
    yield keys
    with maintainer(stack) as conn:
        drop_tables(conn, *SERVED)


@pytest.fixture(scope="module")
def coalescing(stack, feature_keys, tmp_path_factory):
    """One lookup lane, two connections: concurrent lookups queue and share batches."""
    with running_service(stack, tmp_path_factory.mktemp("coalescing") / "service.log", features_tables=",".join(SERVED),
                         features_read_lanes="1", pool_size="2", rate_limit_per_s="0") as live:
        yield live


@pytest.fixture(scope="module")
def reference(stack, feature_keys, tmp_path_factory):
    """The same tables with coalescing off: a transaction per lookup, as before it existed."""
    with running_service(stack, tmp_path_factory.mktemp("reference") / "service.log", features_tables=",".join(SERVED),
                         features_read_lanes="0", pool_size="2", rate_limit_per_s="0") as live:
        yield live


# -- requests and their answers -------------------------------------------------------------------


def make_requests(keys: list[str], rng: random.Random, count: int) -> list[tuple[str, str, dict | None]]:
    """(method, path, body): single-key GETs and multi-key POSTs over the table sets, with
    duplicate keys, misses and keys of several types, and a few lookups of MAX_KEYS keys
    (more than one of them cannot share a batch: BATCH_MAX_KEYS)."""
    requests = []
    for i in range(count):
        tables = rng.choice(TABLE_SETS)
        if i % 40 == 0:
            body = {"entityKeys": [rng.choice(keys) for _ in range(MAX_KEYS)]}
            requests.append(("POST", "/v1/features/lookup", body | ({"tables": tables} if tables else {})))
        elif rng.random() < 0.5:
            key = rng.choice([k for k in keys if "/" not in k])
            query = f"?tables={','.join(tables)}" if tables else ""
            requests.append(("GET", f"/v1/features/{quote(key, safe='')}{query}", None))
        else:
            picked = [rng.choice(keys) for _ in range(rng.randint(1, 8))]
            if rng.random() < 0.3:
                picked.append(picked[0])  # a duplicate key in one lookup
            body = {"entityKeys": picked} | ({"tables": tables} if tables else {})
            requests.append(("POST", "/v1/features/lookup", body))
    assert BATCH_MAX_KEYS < 2 * MAX_KEYS  # so that two full lookups need two batches
    return requests


def owner_of(table: str, key: str) -> str | None:
    """The ``owner`` of the row ``key`` names in ``table``, as its key type reads the key."""
    if table == NAMES:
        return f"{table}:{key}"
    if table == DEVICES:
        try:
            return f"{table}:{uuid.UUID(key)}"
        except ValueError:
            return None
    try:
        return f"{table}:{int(key)}"
    except ValueError:
        return None


def check_rows(body: dict, tables: list[str]) -> int:
    """Each row found is the row of its table for its key; returns how many were found."""
    found = 0
    for result in body["results"] if "results" in body else [body]:
        assert list(result["features"]) == tables, result  # the caller's tables, in its order
        for table, row in result["features"].items():
            if row is None:
                continue
            if table in DATA_TABLES:
                assert row["owner"] == owner_of(table, result["entityKey"]), (table, result["entityKey"], row)
            else:
                assert row["id"] == int(result["entityKey"]), (table, result["entityKey"], row)
            found += 1
    return found


def tables_of(method: str, path: str, body: dict | None) -> list[str]:
    if method == "GET":
        return path.split("?tables=")[1].split(",") if "?tables=" in path else SERVED
    return body.get("tables") or SERVED


async def send_all(url: str, tokens, requests: list, in_flight: int) -> list[tuple[int, dict]]:
    limits = httpx2.Limits(max_connections=in_flight, max_keepalive_connections=in_flight)
    async with httpx2.AsyncClient(base_url=url, timeout=60, limits=limits, headers=service_headers(tokens)) as http:
        gate = asyncio.Semaphore(in_flight)

        async def one(method: str, path: str, body: dict | None) -> tuple[int, dict]:
            async with gate:
                res = await http.request(method, path, json=body)
                return res.status_code, res.json()

        return await asyncio.gather(*(one(*r) for r in requests))


def sequential(url: str, tokens, requests: list) -> list[tuple[int, dict]]:
    with httpx2.Client(base_url=url, timeout=60, headers=service_headers(tokens)) as http:
        return [(res.status_code, res.json()) for res in (http.request(m, p, json=b) for m, p, b in requests)]


# -- tests ------------------------------------------------------------------------------------------


def test_concurrent_lookups_each_get_exactly_their_own_rows(coalescing, reference, tokens, feature_keys):
    requests = make_requests(feature_keys, random.Random(5), REQUESTS)
    expected = sequential(reference.url, tokens, requests)
    found = 0
    for (status, body), request in zip(expected, requests):
        assert status == 200, (request, body)
        found += check_rows(body, tables_of(*request))
    assert found >= REQUESTS  # the answers hold rows, not only misses

    before = metric(coalescing, COALESCED)
    batches_before = metric(coalescing, BATCHES)
    got = asyncio.run(send_all(coalescing.url, tokens, requests, IN_FLIGHT))
    coalesced = metric(coalescing, COALESCED) - before
    batches = metric(coalescing, BATCHES) - batches_before
    for request, answer, want in zip(requests, got, expected):
        assert answer == want, request
        check_rows(answer[1], tables_of(*request))  # and in the caller's order of tables
    # Six sets of tables share one lane: a batch takes only the lookups of the oldest's set.
    assert coalesced >= REQUESTS / 5, f"only {coalesced:.0f} of {REQUESTS} lookups shared a transaction"
    assert batches <= REQUESTS - coalesced / 2  # a shared batch answered two lookups or more

    # With the setting off, the same burst is answered alike, a transaction per lookup.
    assert asyncio.run(send_all(reference.url, tokens, requests, IN_FLIGHT)) == expected
    assert metric(reference, COALESCED) == 0 and metric(reference, BATCHES) == 0


def test_lookups_that_fail_validation_do_not_affect_the_others(coalescing, reference, tokens, feature_keys):
    valid = make_requests(feature_keys, random.Random(6), 200)
    expected = sequential(reference.url, tokens, valid)
    invalid = [
        ("GET", f"/v1/features/7?tables={INTS},nope_table", None),
        ("GET", "/v1/features/7?tables=", None),
        ("POST", "/v1/features/lookup", {"entityKeys": [str(i) for i in range(MAX_KEYS + 1)]}),
        ("POST", "/v1/features/lookup", {"entityKeys": ["7", "tab\tkey"], "tables": [INTS]}),
        ("POST", "/v1/features/lookup", {"entityKeys": ["7"], "tables": ["Bad-Name"]}),
        ("POST", "/v1/features/lookup", {"entityKeys": ["7"], "tables": [NAMES, "other_one"]}),
    ]
    mixed: list[tuple[tuple, object]] = [(request, want) for request, want in zip(valid, expected)]
    for i, request in enumerate(invalid * 10):
        mixed.insert((i * 7) % len(mixed), (request, None))
    before = metric(coalescing, COALESCED)
    answers = asyncio.run(send_all(coalescing.url, tokens, [request for request, _ in mixed], IN_FLIGHT))
    assert metric(coalescing, COALESCED) - before >= len(valid) / 5
    for (request, want), (status, body) in zip(mixed, answers):
        if want is None:
            assert status == 400 and body["error"]["code"] == "validation_error", (request, body)
        else:
            assert (status, body) == want, request


def test_a_caller_past_its_budget_or_cancelled_leaves_the_batch_to_the_others(stack, feature_keys):
    """In-process, through PgBouncer: lookups of one table set queue behind a batch held by a
    table lock, then run as one batch held by another lock; in it, one caller is cancelled and
    one runs out of budget, and the last still gets its rows when the lock goes."""
    settings = stack.settings(features_tables=",".join(SERVED), features_read_lanes=1, pool_size=3)

    async def waiting_on(admin: psycopg.AsyncConnection, table: str) -> int:
        cur = await admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND usename = 'cachesvc_app'"
            " AND query LIKE %s", (f'%"{table}"%',))
        return (await cur.fetchone())[0]

    async def until(condition, what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.02)

    async def run() -> None:
        pool = create_pool(settings.database)
        await open_pool(pool, settings.database)
        admin = await psycopg.AsyncConnection.connect(stack.url(SUPERUSER), autocommit=True)
        holders = [await psycopg.AsyncConnection.connect(stack.url(SUPERUSER)) for _ in range(2)]
        try:
            service = await FeatureService.discover(pool, settings.features, Transactions.from_settings(settings.database))
            batcher = next(iter(service.batchers.values()))  # no replica: every lookup on the primary's
            tables = service.catalog.tables
            small, names_ints, ints_names = [tables[SMALL]], [tables[NAMES], tables[INTS]], [tables[INTS], tables[NAMES]]
            keys_b = ["007", "7", feature_keys[0], "no-such-entity", "name 3 ✓", "7"]
            want_b = await service.reader.lookup(keys_b, ints_names)
            want_x = await service.reader.lookup(["7"], small)
            assert any(f[INTS] for f in want_b) and any(f[NAMES] for f in want_b) and want_x[0][SMALL]

            async def call(budget_s: float, keys: list[str], wanted: list) -> list:
                start_budget(budget_s)  # this task's request budget
                return await service.lookup(keys, wanted)

            for holder, table in zip(holders, (SMALL, NAMES)):
                await holder.execute(f'LOCK TABLE features."{table}" IN ACCESS EXCLUSIVE MODE')
            x = asyncio.create_task(call(30, ["7"], small))
            await until(lambda: waiting_on(admin, SMALL), "the first batch to wait for its lock")
            a = asyncio.create_task(call(1.2, ["7", "007"], names_ints))  # well within the role's lock_timeout (2 s)
            b = asyncio.create_task(call(30, keys_b, ints_names))  # the same set of tables, in another order
            c = asyncio.create_task(call(30, ["name 5 ✓"], names_ints))
            await asyncio.sleep(0.05)
            assert len(batcher.pending) == 3 and len(batcher.running) == 1

            await holders[0].rollback()  # the first batch goes; the three queued form the next
            assert await x == want_x

            async def one_batch_of_three_waits() -> bool:
                return [len(batch) for batch in batcher.running] == [3] and await waiting_on(admin, NAMES) == 1

            await until(one_batch_of_three_waits, "one transaction for the three lookups to wait for its lock")
            assert not a.done(), "the caller's budget ended before the test could see its batch"
            c.cancel()
            with pytest.raises(asyncio.CancelledError):
                await c
            started = time.monotonic()
            with pytest.raises(DatabaseTimeout):
                await a  # its budget ends while the batch waits on
            assert time.monotonic() - started < 2.0
            assert not b.done() and await waiting_on(admin, NAMES) == 1  # the batch goes on for b

            await holders[1].rollback()
            found_b = await b
            assert found_b == want_b and all(list(f) == [INTS, NAMES] for f in found_b)
            assert (batcher.batches, batcher.coalesced) == (2, 3)
        finally:
            for conn in (*holders, admin):
                await conn.close()
            await pool.close()

    asyncio.run(run())


def test_a_failed_batch_is_each_callers_failure_mapped_as_before(stack, tokens, feature_keys, start_service):
    """A statement timeout of the batch's transaction: each caller in it gets 503 unavailable."""
    live = start_service(features_tables=",".join(SERVED), features_read_lanes="1", pool_size="2",
                         rate_limit_per_s="0", statement_timeout_ms="1500")
    requests = [("GET", f"/v1/features/{k}?tables={SMALL}", None) for k in ("7", "0", "8", "9", "10", "11")]
    with maintainer(stack) as conn:
        before = metric(live, COALESCED)
        with conn.transaction():
            conn.execute(f'LOCK TABLE features."{SMALL}" IN ACCESS EXCLUSIVE MODE')
            answers = asyncio.run(send_all(live.url, tokens, requests, len(requests)))
    assert metric(live, COALESCED) - before >= 2  # the callers behind the first shared its successor
    for status, body in answers:
        assert status == 503 and body["error"]["code"] == "unavailable", body
    after = asyncio.run(send_all(live.url, tokens, requests, len(requests)))
    assert [status for status, _ in after] == [200] * len(requests)
    assert after[0][1]["features"][SMALL]["owner"] == f"{SMALL}:7"


def write_generation(path: Path, generation: int) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "v", "note"])
        for key in range(1, GEN_KEYS + 1):
            writer.writerow([key, generation, f"generation {generation}, row {key}"])
    return path


def test_a_table_swap_during_coalesced_lookups_is_never_seen_half_done(coalescing, stack, tokens, tmp_path):
    seen: list[int] = []
    problems: list[str] = []
    stop = threading.Event()

    def check(status: int, body: dict) -> None:
        if status != 200:
            problems.append(f"{status}: {body}")
            return
        results = body.get("results", [body])
        rows = [r["features"][GEN] for r in results]
        if any(row is None for row in rows):
            problems.append("a key was missing: the table was seen empty or half loaded")
            return
        if any(row["id"] != int(r["entityKey"]) for row, r in zip(rows, results)):
            problems.append("a row of another key")
        generations = {row["v"] for row in rows}
        if len(generations) != 1:
            problems.append(f"one lookup saw generations {generations}")
        if any(r["features"].get(STEADY, {"w": 0}) is None for r in results):
            problems.append("the other table lost rows")
        seen.extend(generations)

    async def look_up() -> None:
        rng = random.Random(9)
        limits = httpx2.Limits(max_connections=24, max_keepalive_connections=24)
        async with httpx2.AsyncClient(base_url=coalescing.url, timeout=60, limits=limits,
                                      headers=service_headers(tokens)) as http:
            async def worker(i: int) -> None:
                while not stop.is_set():
                    if i % 2:
                        keys = [str(rng.randint(1, GEN_KEYS)) for _ in range(rng.randint(1, 20))]
                        res = await http.post("/v1/features/lookup", json={"entityKeys": keys, "tables": [GEN, STEADY]})
                    else:
                        res = await http.get(f"/v1/features/{rng.randint(1, GEN_KEYS)}?tables={GEN}")
                    check(res.status_code, res.json())

            await asyncio.gather(*(worker(i) for i in range(24)))

    def saw(generation: int) -> bool:
        raise_failures([reader])
        assert problems == [], problems[:3]
        return generation in seen[-50:] and set(seen[-50:]) == {generation}

    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")} | stack.env()
    before = metric(coalescing, COALESCED)
    reader = CheckedThread(lambda: asyncio.run(look_up()), name="lookups")
    reader.start()
    try:
        wait_until(lambda: saw(1), 30, "lookups of generation 1")
        for generation in (2, 3):
            path = write_generation(tmp_path / f"g{generation}.csv", generation)
            result = subprocess.run([sys.executable, "-m", "cachesvc", "features", "load", GEN, str(path)],
                                    env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr
            assert json.loads(result.stdout)["rows"] == GEN_KEYS
            wait_until(lambda: saw(generation), 30, f"lookups of generation {generation}")
    finally:
        stop.set()
        join_all([reader], 60)
    assert problems == [], problems[:3]
    assert set(seen) == {1, 2, 3}
    assert metric(coalescing, COALESCED) - before >= 100  # the lookups around the swaps shared batches


@pytest.mark.parametrize("value", ["-1", "two"])
def test_the_setting_is_checked(value):
    from cachesvc.settings import Settings, SettingsError

    assert Settings.from_env({"CACHESVC_FEATURES_READ_LANES": "0"}).features.read_lanes == 0
    with pytest.raises(SettingsError, match="CACHESVC_FEATURES_READ_LANES"):
        Settings.from_env({"CACHESVC_FEATURES_READ_LANES": value})
