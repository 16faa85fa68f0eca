"""`cachesvc features load` and `demo`: a swap that readers never see half done."""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import httpx2
import psycopg
import pytest

from cachesvc.localstack import SUPERUSER
from tests.harness import (CheckedThread, LiveService, create_table, drop_tables, feature_tables, join_all, maintainer,
                           raise_failures, service_headers, wait_until)

GEN = "ft_generations"
OTHER = "ft_steady"
KEYS = 2000


def cli(stack, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")} | stack.env()
    return subprocess.run([sys.executable, "-m", "cachesvc", *args], env=env, capture_output=True, text=True, timeout=timeout)


def write_generation(path: Path, generation: int) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "v", "note"])
        for key in range(1, KEYS + 1):
            writer.writerow([key, generation, f"generation {generation}, row {key}" if key % 7 else ""])
    return path


@pytest.fixture
def generations(stack):
    with maintainer(stack) as conn:
        create_table(conn, GEN, "id integer PRIMARY KEY, v integer NOT NULL, note text",
                     ((k, 1, f"generation 1, row {k}") for k in range(1, KEYS + 1)))
        create_table(conn, OTHER, "id integer PRIMARY KEY, w integer", ((k, k) for k in range(1, KEYS + 1)))
    yield
    with maintainer(stack) as conn:
        drop_tables(conn, GEN, OTHER)


def test_lookups_during_loads_never_see_a_mix_of_generations(stack, tokens, generations, tmp_path):
    live = LiveService(stack, tmp_path / "svc.log", features_tables=f"{GEN},{OTHER}")
    seen: list[set[int]] = []
    problems: list[str] = []
    stop = threading.Event()

    def look_up() -> None:
        rng = random.Random(7)
        with httpx2.Client(base_url=live.url, timeout=30, headers=service_headers(tokens)) as http:
            while not stop.is_set():
                keys = [str(rng.randint(1, KEYS)) for _ in range(100)]
                res = http.post("/v1/features/lookup", json={"entityKeys": keys})
                if res.status_code != 200:
                    problems.append(f"{res.status_code}: {res.text}")
                    continue
                rows = [r["features"][GEN] for r in res.json()["results"]]
                if any(row is None for row in rows):
                    problems.append("a key was missing: the table was seen empty or half loaded")
                seen.append({row["v"] for row in rows if row})
                if any(r["features"][OTHER] is None for r in res.json()["results"]):
                    problems.append("the other table lost rows")

    def readers_saw(generation: int) -> bool:
        raise_failures(readers)
        assert problems == [], problems[:3]
        return any(gens == {generation} for gens in seen[-30:])

    readers = [CheckedThread(look_up, name=f"reader-{i}") for i in range(3)]
    try:
        for t in readers:
            t.start()
        wait_until(lambda: readers_saw(1), 30, "lookups of generation 1")
        for generation in (2, 3):
            result = cli(stack, "features", "load", GEN, str(write_generation(tmp_path / f"g{generation}.csv", generation)))
            assert result.returncode == 0, result.stderr
            summary = json.loads(result.stdout)
            assert summary["loaded"] is True and summary["rows"] == KEYS
            wait_until(lambda: readers_saw(generation), 30, f"lookups of generation {generation}")
    finally:
        stop.set()
        try:
            join_all(readers, 30)  # an exception in a reader fails the test here
        finally:
            live.stop()
    assert problems == []
    assert all(len(generations) == 1 for generations in seen), [g for g in seen if len(g) != 1][:3]
    assert {g for gens in seen for g in gens} == {1, 2, 3}
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        assert conn.execute(f"SELECT count(*), min(v), max(v) FROM features.{GEN}").fetchone() == (KEYS, 3, 3)
        assert conn.execute(f"SELECT count(*) FROM features.{GEN} WHERE note IS NULL").fetchone()[0] == KEYS // 7
        owner, readable = conn.execute(
            f"SELECT relowner::regrole::text, has_table_privilege('cache_app', 'features.{GEN}', 'SELECT')"
            f" FROM pg_class WHERE oid = 'features.{GEN}'::regclass").fetchone()
        assert (owner, readable) == ("cache_maintainer", True)
        indexes = [r[0] for r in conn.execute(f"SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = 'features.{GEN}'::regclass")]
        assert indexes == [f"features.{GEN}_pkey"]
        audit = conn.execute(
            "SELECT details->>'table', (details->>'rows')::int FROM cache_audit_log"
            " WHERE action = 'maintenance.features_load' ORDER BY occurred_at DESC LIMIT 1").fetchone()
        assert audit == (GEN, KEYS)
        assert not any(t.startswith("_load_") for t in feature_tables(conn))


def test_bad_input_changes_nothing(stack, generations, tmp_path):
    def state():
        with psycopg.connect(stack.url(SUPERUSER)) as conn:
            return conn.execute(f"SELECT count(*), sum(v) FROM features.{GEN}").fetchone(), feature_tables(conn)

    before = state()
    unknown_column = tmp_path / "unknown.csv"
    unknown_column.write_text("id,v,colour\n1,5,red\n")
    no_key = tmp_path / "nokey.csv"
    no_key.write_text("v,note\n5,x\n")
    duplicate = tmp_path / "duplicate.csv"
    duplicate.write_text("id,v,note\n1,5,x\n1,6,y\n")
    not_a_number = tmp_path / "nan.csv"
    not_a_number.write_text("id,v,note\n1,five,x\n")
    cases = [
        ((GEN, str(unknown_column)), 2, "columns not in ft_generations: colour"),
        ((GEN, str(no_key)), 2, "must include the key column id"),
        (("ft_nowhere", str(unknown_column)), 2, "features.ft_nowhere does not exist"),
        ((GEN, str(tmp_path / "absent.csv")), 2, "no such file"),
        ((GEN, str(duplicate)), 1, "duplicate key"),
        ((GEN, str(not_a_number)), 1, "invalid input syntax for type integer"),
    ]
    for args, code, message in cases:
        result = cli(stack, "features", "load", *args)
        assert result.returncode == code, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert state() == before


def test_a_second_load_of_the_same_table_exits_0_saying_so(stack, generations, tmp_path):
    from cachesvc.features.load import lock_key

    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key("features", GEN),))
        result = cli(stack, "features", "load", GEN, str(write_generation(tmp_path / "g9.csv", 9)))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "already_running"  # the runner's summary, with the fields of a load
    assert {"table": GEN, "loaded": False, "reason": "another load of this table is running"}.items() <= report.items()
    assert f"of features.{GEN} is held by another run of features load" in result.stderr
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        assert conn.execute(f"SELECT max(v) FROM features.{GEN}").fetchone()[0] == 1


def test_load_refuses_a_table_maintainer_does_not_own(stack, admin, tmp_path):
    admin.execute("CREATE TABLE features.ft_owned_elsewhere (id integer PRIMARY KEY, v integer)")
    admin.execute("GRANT SELECT ON features.ft_owned_elsewhere TO cache_app")
    try:
        csv_file = tmp_path / "x.csv"
        csv_file.write_text("id,v\n1,1\n")
        result = cli(stack, "features", "load", "ft_owned_elsewhere", str(csv_file))
        assert result.returncode == 2 and "owned by cachesvc_admin" in result.stderr
        assert admin.execute("SELECT count(*) FROM features.ft_owned_elsewhere").fetchone()[0] == 0
    finally:
        admin.execute("DROP TABLE features.ft_owned_elsewhere")


def test_demo_makes_mixed_type_tables_with_nulls_and_stats_report_them(stack, tmp_path):
    result = cli(stack, "features", "demo", "--tables", "2", "--rows", "2000")
    try:
        assert result.returncode == 0, result.stderr
        made = json.loads(result.stdout)["created"]
        assert len(made) == 2
        with psycopg.connect(stack.url(SUPERUSER)) as conn:
            for table in made:
                types = {r[0] for r in conn.execute(
                    "SELECT format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0",
                    (f"features.{table}",))}
                assert {"bigint", "integer", "double precision", "numeric", "boolean", "text", "timestamp with time zone"} <= types
                assert conn.execute(f"SELECT count(*), min(entity_key), max(entity_key) FROM features.{table}").fetchone() == (2000, 1, 2000)
                nullable = conn.execute(
                    f"SELECT count(*) FILTER (WHERE t IS NOT NULL) < count(*) FROM features.{table} AS t").fetchone()[0]
                assert nullable, f"{table} has no NULL anywhere"
        again = cli(stack, "features", "demo", "--tables", "2", "--rows", "10", "--only-missing")
        assert json.loads(again.stdout)["kept"] == made
        stats = cli(stack, "features", "stats")
        assert stats.returncode == 0, stats.stderr
        reported = {t["tableName"]: t for t in json.loads(stats.stdout)["tables"]}
        assert all(reported[t]["rowEstimate"] == 2000 and reported[t]["hasPrimaryKey"] for t in made)
        assert cli(stack, "features", "demo", "--tables", "0").returncode == 2
    finally:
        with maintainer(stack) as conn:
            drop_tables(conn, *json.loads(result.stdout or '{"created": []}')["created"])
