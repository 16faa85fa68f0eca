"""Feature lookups over HTTP and in-process, against feature tables on the real stack.

Every value returned is compared with a direct SQL read of the same row, typed by psycopg:
the service must neither lose nor change a value, whatever the column's type.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import re
import struct
import time
import uuid
from decimal import Decimal

import httpx2
import jwt
import psycopg
import pytest
from psycopg import errors, sql

from cachesvc.db.pools import create_pool, open_pool
from cachesvc.features import catalog
from cachesvc.features.reader import FeatureReader
from cachesvc.localstack import SUPERUSER
from tests.harness import (as_user, connect, create_table, drop_tables, http_client, maintainer, running_service,
                           service_headers, wait_until)

RNG = random.Random(20261123)
UTC = dt.timezone.utc

USERS = "ft_users"
NAMES = "ft_names"
DEVICES = "ft_devices"
SMALL = "ft_small"
TABLES = [USERS, NAMES, DEVICES, SMALL]

USERS_DDL = """
    entity_key bigint PRIMARY KEY, i integer, b bigint, f double precision, r real, n numeric(16,4),
    ok boolean, label text, seen_at timestamptz, day date, local_ts timestamp, tags text[], meta jsonb
"""


def maybe(value, share_null: float = 0.2):
    return None if RNG.random() < share_null else value


def user_rows(count: int) -> list[tuple]:
    keys = RNG.sample(range(1, 10**12), count) + [2**62, 7]  # a big key, and one that "007" names
    rows = []
    for key in keys:
        rows.append((
            key,
            maybe(RNG.randint(-2**31, 2**31 - 1)),
            maybe(RNG.randint(-2**62, 2**62)),
            maybe(RNG.uniform(-1e6, 1e6)),
            maybe(RNG.uniform(-1000, 1000)),
            maybe(Decimal(RNG.randint(-10**15, 10**15)) / 10000),
            maybe(RNG.random() < 0.5),
            maybe(RNG.choice(["plain", "with \"quotes\"", "ünïcødé ✓", "new\nline", "back\\slash", ""])),
            maybe(dt.datetime(2020, 1, 1, tzinfo=UTC) + dt.timedelta(seconds=RNG.uniform(0, 2e8))),
            maybe(dt.date(2020, 1, 1) + dt.timedelta(days=RNG.randint(0, 3000))),
            maybe(dt.datetime(2020, 1, 1) + dt.timedelta(microseconds=RNG.randint(0, 10**14))),
            maybe([RNG.choice(["a", "b", "c d"]) for _ in range(RNG.randint(0, 3))]),
            maybe(json.dumps({"n": RNG.randint(0, 99), "s": RNG.choice(["x", "y"])})),
        ))
    return rows


@pytest.fixture(scope="module")
def feature_data(stack):
    users = user_rows(300)
    names = [(f"user {i} ✓ é", maybe(RNG.random()), maybe(RNG.randint(0, 1000))) for i in range(200)]
    names.append(("team/with slash", 0.5, 1))
    devices = [(uuid.UUID(int=RNG.getrandbits(128)), RNG.choice(["ios", "android"]), maybe(RNG.random() < 0.5)) for _ in range(100)]
    small = [(k, RNG.randint(-32768, 32767)) for k in RNG.sample(range(-1000, 100000), 150)]
    with maintainer(stack) as conn:
        create_table(conn, USERS, USERS_DDL, users)
        create_table(conn, NAMES, "name varchar(80) PRIMARY KEY, score double precision, cnt integer", names)
        create_table(conn, DEVICES, "id uuid PRIMARY KEY, model text, active boolean", devices)
        create_table(conn, SMALL, "k integer PRIMARY KEY, v smallint", small)
    yield {
        USERS: [str(r[0]) for r in users],
        NAMES: [r[0] for r in names],
        DEVICES: [str(r[0]) for r in devices],
        SMALL: [str(r[0]) for r in small],
    }
    with maintainer(stack) as conn:
        drop_tables(conn, *TABLES)


@pytest.fixture(scope="module")
def feature_service(stack, feature_data, tmp_path_factory):
    with running_service(stack, tmp_path_factory.mktemp("features") / "service.log",
                         flush_interval_s="0.2", features_tables=",".join(TABLES)) as live:
        yield live


@pytest.fixture
def http(feature_service):
    """The client of this module's feature service (not the session's)."""
    with http_client(feature_service) as client:
        yield client


# -- the reference: a direct, typed SQL read ----------------------------------------------

KEY_COLUMNS = {USERS: ("entity_key", "bigint"), NAMES: ("name", "text"), DEVICES: ("id", "uuid"), SMALL: ("k", "integer")}
BOUNDS = {"bigint": 2**63, "integer": 2**31}


def typed_key(table: str, key: str):
    """What the key means for the table's key type, or None when no row can have it."""
    kind = KEY_COLUMNS[table][1]
    if kind == "text":
        return key
    if kind == "uuid":
        try:
            return uuid.UUID(key)
        except ValueError:
            return None
    if not re.fullmatch(r"-?[0-9]+", key):
        return None
    value = int(key)
    return value if -BOUNDS[kind] <= value < BOUNDS[kind] else None


def direct_row(conn: psycopg.Connection, table: str, key: str) -> dict | None:
    value = typed_key(table, key)
    if value is None:
        return None
    cur = conn.execute(
        sql.SQL("SELECT * FROM {} WHERE {} = %s").format(sql.Identifier("features", table), sql.Identifier(KEY_COLUMNS[table][0])),
        (value,),
    )
    row = cur.fetchone()
    return None if row is None else dict(zip([d.name for d in cur.description], row))


def same(json_value, db_value, column_type: str) -> bool:
    """A JSON value (floats parsed as Decimal) against the psycopg-typed database value."""
    if db_value is None or json_value is None:
        return db_value is None and json_value is None
    if column_type in ("integer", "bigint", "smallint"):
        return type(json_value) is int and json_value == db_value
    if column_type == "double precision":
        return isinstance(json_value, (int, Decimal)) and float(json_value) == db_value
    if column_type == "real":  # the same float4, whichever decimal form spells it
        return struct.pack("f", float(json_value)) == struct.pack("f", db_value)
    if column_type == "numeric":
        return isinstance(json_value, (int, Decimal)) and Decimal(json_value) == db_value
    if column_type == "timestamp with time zone":
        parsed = dt.datetime.fromisoformat(json_value)
        return parsed.tzinfo is not None and parsed == db_value
    if column_type == "timestamp without time zone":
        return dt.datetime.fromisoformat(json_value) == db_value
    if column_type == "date":
        return dt.date.fromisoformat(json_value) == db_value
    if column_type == "uuid":
        return uuid.UUID(json_value) == db_value
    if column_type == "jsonb":
        return json_value == db_value
    return json_value == db_value  # text, boolean, text[]


def column_types(conn: psycopg.Connection, table: str) -> dict[str, str]:
    return dict(conn.execute(
        "SELECT attname::text, format_type(atttypid, NULL) FROM pg_attribute"
        " WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
        (f"features.{table}",),
    ).fetchall())


def check_against_database(conn, key: str, features: dict, tables: list[str]) -> int:
    """Assert every table's answer for ``key`` equals the direct read; returns the rows compared."""
    assert list(features) == tables
    compared = 0
    for table in tables:
        expected = direct_row(conn, table, key)
        got = features[table]
        if expected is None:
            assert got is None, (table, key, got)
            continue
        assert isinstance(got, dict), (table, key, got)
        assert set(got) == set(expected), (table, key)
        types = column_types(conn, table)
        for column, value in expected.items():
            assert same(got[column], value, types[column]), (table, key, column, got[column], value)
        compared += 1
    return compared


def probe_keys(data: dict, rng: random.Random) -> list[str]:
    keys = [rng.choice(data[t]) for t in TABLES for _ in range(6)]
    keys += ["007", "-0", "99999999999", "not-a-number", str(uuid.uuid4()), "999999999999999999999", "0"]
    rng.shuffle(keys)
    return keys


def parse(response: httpx2.Response):
    return json.loads(response.text, parse_float=Decimal)


# -- HTTP ---------------------------------------------------------------------------------


def test_random_keys_equal_a_direct_sql_read(http, tokens, admin, feature_data):
    rng = random.Random(1)
    keys = probe_keys(feature_data, rng)[:100]
    res = http.post("/v1/features/lookup", json={"entityKeys": keys}, headers=service_headers(tokens))
    assert res.status_code == 200, res.text
    results = parse(res)["results"]
    assert [r["entityKey"] for r in results] == keys
    compared = sum(check_against_database(admin, r["entityKey"], r["features"], TABLES) for r in results)
    assert compared >= 24  # every table answered for the keys drawn from it
    for key in [k for k in keys if "/" not in k][:10]:
        one = http.get(f"/v1/features/{key}", headers=service_headers(tokens))
        assert one.status_code == 200, one.text
        body = parse(one)
        assert body["entityKey"] == key
        check_against_database(admin, key, body["features"], TABLES)


def test_json_types_are_preserved(http, tokens, admin, feature_data):
    key = next(
        k for k in feature_data[USERS]
        if all(v is not None for v in direct_row(admin, USERS, k).values())
    )
    body = http.get(f"/v1/features/{key}?tables={USERS}", headers=service_headers(tokens)).json()
    row = body["features"][USERS]
    assert type(row["entity_key"]) is int and type(row["i"]) is int and type(row["b"]) is int
    assert type(row["f"]) in (int, float) and type(row["r"]) in (int, float) and type(row["n"]) in (int, float)
    assert type(row["ok"]) is bool and isinstance(row["label"], str) and isinstance(row["tags"], list)
    assert isinstance(row["meta"], dict)
    assert dt.datetime.fromisoformat(row["seen_at"]).utcoffset() is not None  # ISO 8601 with offset
    assert "T" in row["seen_at"] and "T" in row["local_ts"]
    dt.date.fromisoformat(row["day"])


def test_tables_parameter_selects_and_orders(http, tokens, admin, feature_data):
    key = feature_data[NAMES][3]  # spaces and non-ASCII: URL-encoded in the path
    res = http.get(f"/v1/features/{key}", params={"tables": f"{SMALL}, {NAMES}"}, headers=service_headers(tokens))
    assert res.status_code == 200, res.text
    body = parse(res)
    assert list(body["features"]) == [SMALL, NAMES]
    assert body["features"][SMALL] is None
    assert body["features"][NAMES]["name"] == key
    check_against_database(admin, key, body["features"], [SMALL, NAMES])
    # A key with '/' is not a path segment; the lookup takes any key.
    res = http.post("/v1/features/lookup", json={"entityKeys": ["team/with slash"], "tables": [NAMES]},
                    headers=service_headers(tokens))
    assert res.json()["results"][0]["features"][NAMES]["name"] == "team/with slash"


def test_missing_key_is_null_for_every_table(http, tokens):
    res = http.get("/v1/features/no-such-entity", headers=service_headers(tokens))
    assert res.status_code == 200
    assert res.json() == {"entityKey": "no-such-entity", "features": dict.fromkeys(TABLES)}
    res = http.post("/v1/features/lookup", json={"entityKeys": ["123456789012345678901234", "x"], "tables": [USERS]},
                    headers=service_headers(tokens))
    assert [r["features"] for r in res.json()["results"]] == [{USERS: None}, {USERS: None}]


def test_unknown_table_is_a_400_naming_it(http, tokens):
    res = http.get(f"/v1/features/1?tables={USERS},nope_table", headers=service_headers(tokens))
    assert res.status_code == 400
    error = res.json()["error"]
    assert error["code"] == "validation_error" and error["field"] == "tables" and "nope_table" in error["message"]
    res = http.post("/v1/features/lookup", json={"entityKeys": ["1"], "tables": ["other_one", USERS]},
                    headers=service_headers(tokens))
    assert res.status_code == 400 and "other_one" in res.json()["error"]["message"]
    # a table that exists in the database but is not served (not in the allow-list) is unknown too
    res = http.get("/v1/features/1?tables=feature_hot_keys", headers=service_headers(tokens))
    assert res.status_code == 400


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"entityKeys": []}, "entityKeys"),
        ({"entityKeys": [str(i) for i in range(101)]}, "entityKeys"),
        ({"entityKeys": ["ok", "tab\tkey"]}, "entityKeys[1]"),
        ({"entityKeys": ["x" * 513]}, "entityKeys[0]"),
        ({"entityKeys": ["1"], "tables": ["Bad-Name"]}, "tables[0]"),
        ({"entityKeys": ["1"], "extra": 1}, None),
    ],
)
def test_bad_lookup_bodies_are_validation_errors(http, tokens, body, field):
    res = http.post("/v1/features/lookup", json=body, headers=service_headers(tokens))
    assert res.status_code == 400, res.text
    assert res.json()["error"]["code"] == "validation_error"
    if field:
        assert res.json()["error"]["field"] == field


# -- who may read -------------------------------------------------------------------------


ROUTES = [("GET", "/v1/features/1", None), ("POST", "/v1/features/lookup", {"entityKeys": ["1"]}), ("GET", "/v1/features/_stats", None)]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
def test_only_service_tokens_may_read_features(http, tokens, stack, method, path, body):
    assert http.request(method, path, json=body, headers=service_headers(tokens)).status_code == 200
    user = http.request(method, path, json=body, headers={"Authorization": f"Bearer {tokens(uuid.uuid4())}"})
    assert user.status_code == 403 and user.json()["error"]["code"] == "forbidden"
    now = int(time.time())
    claims = {"sub": "svc", "aud": "authenticated", "role": "service_role", "exp": now + 60}
    forged = jwt.encode(claims, "some-other-secret-of-sufficient-length!!", algorithm="HS256")
    expired = jwt.encode(claims | {"exp": now - 5}, stack.settings().jwt_secret, algorithm="HS256")
    for token in (forged, expired):
        res = http.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
        assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized"
    assert http.request(method, path, json=body).status_code == 401


def test_a_setting_opens_features_to_user_tokens(stack, tokens, feature_data, start_service):
    live = start_service(features_tables=USERS, features_open_to_users="true")
    key = feature_data[USERS][0]
    user = httpx2.get(f"{live.url}/v1/features/{key}", headers=as_user(tokens, uuid.uuid4()))
    assert user.status_code == 200 and user.json()["features"][USERS]["entity_key"] == int(key)
    anon = jwt.encode({"sub": str(uuid.uuid4()), "aud": "authenticated", "role": "anon", "exp": int(time.time()) + 60},
                      stack.settings().jwt_secret, algorithm="HS256")
    assert httpx2.get(f"{live.url}/v1/features/{key}", headers={"Authorization": f"Bearer {anon}"}).status_code == 403


# -- both strategies, in-process ------------------------------------------------------------


def test_statement_and_pipeline_strategies_agree_with_the_database(stack, admin, feature_data):
    settings = stack.settings()
    keys = probe_keys(feature_data, random.Random(2))[:100]

    async def run():
        pool = create_pool(settings.database)
        await open_pool(pool, settings.database)
        try:
            async with pool.connection() as conn:
                found = await catalog.discover(conn, "features", TABLES)
            results = {}
            for strategy in ("statement", "pipeline"):
                reader = FeatureReader(pool, found, strategy=strategy)
                results[strategy] = await reader.lookup(keys)
            one_table = await FeatureReader(pool, found).lookup(keys[:5], [found.tables[NAMES]])
            return results, one_table
        finally:
            await pool.close()

    results, one_table = asyncio.run(run())
    as_json = {s: [{t: json.loads(bytes(v), parse_float=Decimal) if v is not None else None for t, v in r.items()} for r in rows]
               for s, rows in results.items()}
    assert as_json["statement"] == as_json["pipeline"]
    for key, features in zip(keys, as_json["statement"]):
        check_against_database(admin, key, features, TABLES)
    assert [list(r) for r in one_table] == [[NAMES]] * 5


# -- statistics and hot keys ----------------------------------------------------------------


def test_stats_report_the_view_figures_and_warn_on_sequential_scans(http, tokens, stack, monitor_conn):
    def small_stats() -> dict:
        body = http.get("/v1/features/_stats", headers=service_headers(tokens)).json()
        return body | {"small": next(t for t in body["tables"] if t["tableName"] == SMALL)}

    before = small_stats()["small"]["seqTupRead"]
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        conn.execute(f"SELECT count(*) FROM features.{SMALL} WHERE v > 0")  # a sequential scan reading rows
        conn.execute("SELECT pg_stat_force_next_flush()")
    body = wait_until(small_stats, 10, until=lambda body: body["small"]["seqTupRead"] >= before + 150,
                      error="the sequential scan never showed", interval=0.2)
    assert any(w.startswith(f"{SMALL}: sequential scans read") for w in body["warnings"]), body["warnings"]
    assert body["schemaName"] == "features"
    by_name = {t["tableName"]: t for t in body["tables"]}
    view = {r[0]: r for r in monitor_conn.execute(
        "SELECT table_name, row_estimate, total_bytes, has_primary_key FROM feature_table_health")}
    for table in TABLES:
        stats = by_name[table]
        assert (table, stats["rowEstimate"], stats["totalBytes"], stats["hasPrimaryKey"]) == view[table]
        assert 0 <= (stats["bufferHitRatio"] or 0) <= 1
    assert by_name[USERS]["rowEstimate"] == 302


def test_hot_keys_are_recorded_through_the_function_only(http, tokens, admin, stack):
    key = f"hot-{uuid.uuid4()}"
    for _ in range(3):
        http.get(f"/v1/features/{key}", headers=service_headers(tokens))
    http.post("/v1/features/lookup", json={"entityKeys": [key, key]}, headers=service_headers(tokens))
    def hits() -> int:
        row = admin.execute("SELECT hits FROM feature_hot_keys WHERE entity_key = %s", (key,)).fetchone()
        return row[0] if row else 0

    wait_until(lambda: hits() >= 5, 10, "the hot key's five lookups flushed")
    assert hits() == 5  # none counted twice
    # The forbidden path: the service's login cannot write the table itself, nor flood the function.
    with connect(stack, "cachesvc_app", autocommit=True) as app:
        assert app.execute("SELECT count(*) FROM feature_hot_keys WHERE entity_key = %s", (key,)).fetchone()[0] == 1
        for statement in (
            "INSERT INTO feature_hot_keys (entity_key, hits) VALUES ('x', 1)",
            "UPDATE feature_hot_keys SET hits = 0",
            "DELETE FROM feature_hot_keys",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                app.execute(statement)
        with pytest.raises(errors.InvalidParameterValue):
            app.execute("SELECT record_feature_hot_keys(array_fill('k'::text, ARRAY[10001]), array_fill(1::bigint, ARRAY[10001]))")


@pytest.mark.parametrize(
    "bad",
    [
        {"CACHESVC_FEATURES_STRATEGY": "fastest"},
        {"CACHESVC_FEATURES_READY_HIT_RATIO": "1.5"},
        {"CACHESVC_FEATURES_PREWARM_FRACTION": "-0.1"},
        {"CACHESVC_FEATURES_WARMUP_LOOKUPS": "-1"},
        {"CACHESVC_FEATURES_SCHEMA": " "},
        {"CACHESVC_FEATURES_OPEN_TO_USERS": "maybe"},
    ],
)
def test_feature_settings_are_checked(bad):
    from cachesvc.settings import Settings, SettingsError

    assert Settings.from_env({}).features.strategy == "statement"
    with pytest.raises(SettingsError, match="CACHESVC_FEATURES_"):
        Settings.from_env(bad)
