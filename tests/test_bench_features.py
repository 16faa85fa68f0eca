"""The feature ceiling of ``scripts/bench`` runs the transaction the service sends (cachesvc/bench/ceiling.py).

On a stack of its own, with every statement logged: the demo tables (and the audit rows their
swap writes) stay out of the session's stack, and the service's own query text can be read
back from PostgreSQL's log and compared with the generated one.
"""

from __future__ import annotations

import json
import random
import re

import psycopg
import pytest

from cachesvc.bench import ceiling, run
from cachesvc.features import demo
from cachesvc.localstack import SUPERUSER
from tests.harness import connect, http_client, running_service, throwaway_stack, token_maker, wait_until

TABLES = 30
ROWS = 300
NAMES = demo.table_names(TABLES)
PATH = "/v1/features/{}?tables=" + ",".join(NAMES)
LOG_ENTRY = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[\d+\] LOG:  statement: ", re.M)


@pytest.fixture(scope="module")
def bench_stack():
    with throwaway_stack("cachesvc-bench-features-", log_statement="all", log_line_prefix="%m [%p] ") as s:
        demo.generate(s.url(SUPERUSER), "features", tables=TABLES, rows=ROWS)
        yield s


@pytest.fixture(scope="module")
def live(bench_stack, tmp_path_factory):
    with running_service(bench_stack, tmp_path_factory.mktemp("bench-features") / "service.log", rate_limit_per_s="0") as s:
        yield s


@pytest.fixture(scope="module")
def http(live, bench_stack):
    headers = {"Authorization": f"Bearer {token_maker(bench_stack)(service=True)}"}
    with http_client(live, headers=headers) as client:
        yield client


@pytest.fixture(scope="module")
def query(bench_stack) -> str:
    """The generated query string, ``:k`` for the key."""
    with connect(bench_stack, "cachesvc_app", autocommit=True) as conn:
        return ceiling.feature_query(conn, bench_stack.settings(), NAMES)


def statements_logged(stack) -> list[str]:
    """Every statement PostgreSQL logged, as sent (the log indents a statement's later lines with a tab)."""
    text = stack.postgres.logfile.read_text(errors="replace")
    starts = [m.end() for m in LOG_ENTRY.finditer(text)]
    ends = [m.start() for m in LOG_ENTRY.finditer(text)][1:] + [len(text)]
    return [text[a:b].rstrip("\n").replace("\n\t", "\n") for a, b in zip(starts, ends)]


def squeezed(sql: str) -> str:
    """``sql`` with its runs of white space made one space, none before a semicolon, no final semicolon."""
    return re.sub(r"\s*;", ";", re.sub(r"\s+", " ", sql)).strip().removesuffix(";")


def test_the_service_sends_exactly_the_generated_query(bench_stack, http, query):
    """If the reader's statement, its context or the runner's query string change, the ceiling
    follows; if the service stops sending what they build (a path of its own), this fails."""
    for key in ("17", str(ROWS), str(ROWS + 5)):  # the last one is in no table
        assert http.get(PATH.format(key)).status_code == 200
        sent = query.replace(":k", key)
        wait_until(lambda: sent in statements_logged(bench_stack), 5, f"the service's query for key {key}",
                   error=lambda _: f"the service did not send the generated query for key {key}:\n{sent}")


def test_the_generated_transaction_returns_the_rows_the_service_returns(bench_stack, http, query):
    keys = [str(k) for k in random.Random(3).sample(range(1, ROWS + 1), 5)] + [str(ROWS + 1)]
    with connect(bench_stack, "cachesvc_app", autocommit=True) as conn:
        for key in keys:
            cur = psycopg.ClientCursor(conn)
            cur.execute(query.replace(":k", key))  # one simple-protocol query, as pgbench sends it
            cur.nextset()  # past BEGIN, to the context
            cur.nextset()  # to the statement
            (row,) = cur.fetchall()
            assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE  # committed
            ordinal, *columns = row
            from_sql = {name: None if col is None else json.loads(col) for name, col in zip(NAMES, columns, strict=True)}
            res = http.get(PATH.format(key))
            assert res.status_code == 200, res.text
            from_service = res.json()["features"]
            assert list(from_service) == NAMES
            assert ordinal == 1 and from_sql == from_service
            hits = sum(v is not None for v in from_sql.values())
            assert hits == (TABLES if int(key) <= ROWS else 0), (key, hits)


def test_pgbench_runs_the_generated_script(bench_stack, query, tmp_path):
    """pgbench puts its random key where the service puts the key (inside the array literal
    too), and sends the same transaction, white space aside."""
    script = tmp_path / "features.sql"
    with connect(bench_stack, "cachesvc_app", autocommit=True) as conn:
        script.write_text(ceiling.feature_script(conn, bench_stack.settings(), NAMES, ROWS))
    assert script.read_text().startswith(f"\\set k random(1, {ROWS})\n")
    pattern = re.compile(re.escape(squeezed(query)).replace(":k", "([0-9]+)"))

    def keys_run() -> list[int]:
        return [int(m.group(1)) for s in statements_logged(bench_stack) if (m := pattern.fullmatch(squeezed(s)))]

    before = len(keys_run())
    result = ceiling.pgbench(bench_stack, script, clients=2, transactions=5)
    assert result["transactions"] == 10 and result["tps"] > 0
    ran = wait_until(lambda: keys_run()[before:], 5, "pgbench's statements in the log", until=lambda k: len(k) >= 10)
    assert len(ran) == 10 and all(1 <= k <= ROWS for k in ran), ran


def test_the_report_sets_the_feature_path_beside_its_ceiling():
    cpu = {"service": 0.5, "pgbouncer": 0.05, "postgres": 0.4}
    results = {
        "ceiling": {"tps": 1000.0, "latency_avg_ms": 3.0, "transactions": 10000, "cpu_ms_per_request": cpu | {"service": None}},
        "get_closed": {"rps": 1100.0, "p50_ms": 2.0, "p99_ms": 9.0, "cpu_ms_per_request": cpu},
        "features_ceiling": {"tps": 800.0, "latency_avg_ms": 4.0, "transactions": 8000,
                             "cpu_ms_per_request": {"pgbouncer": 0.06, "postgres": 1.1}},
        "features_closed": {"rps": 600.0, "p50_ms": 5.0, "p99_ms": 20.0, "cpu_ms_per_request": cpu},
        "features_after_restart_kept": {"first_ms": 9.5, "warm_p50_ms": 2.5, "x_warm_p50": 3.8, "target_x": 2.0,
                                        "target_met": False, "first_status": 503, "errors": 4},
        "features_l1_10key_200": {"rps": 200.0, "p50_ms": 2.0, "p99_ms": 4.0, "p999_ms": 6.0, "target_rps": 180.0,
                                  "target_met": True, "l1_hit_ratio": 0.876},
        "features_l1_closed": {"rps": 1200.0, "p50_ms": 5.0, "p99_ms": 20.0, "l1_hit_ratio": 0.91, "cpu_ms_per_request": cpu},
        "features_after_restart_kept_rewarmed": {"first_ms": 4.0, "warm_p50_ms": 2.5, "x_warm_p50": 1.6, "target_x": 2.0,
                                                 "target_met": True, "rewarmed_after_s": 1.23},
        "features_after_restart_started": {"error": 'not ready after 60 s; /readyz said: {"a": "b|c"}', "warm_p50_ms": 2.5,
                                           "target_x": 2.0, "target_met": False},
        "put_closed": {"rps": 500.0, "p50_ms": 6.0, "p99_ms": 30.0},
        "put_open_300": {"rps": 300.0, "p50_ms": 3.0, "p99_ms": 5.0, "p999_ms": 9.0, "target_rps": 270.0, "target_met": True},
    }
    assert run.ratios(results) == {"get": 1.1, "features_1key": 0.75, "features_1key_l1_hot": 1.5}
    lines = run.report_table(results, 30, 100_000).splitlines()
    ceiling_row = next(line for line in lines if line.startswith("| feature ceiling: pgbench"))
    assert "| 800 tx/s | avg 4.0 ms |" in ceiling_row and ceiling_row.endswith("| – / 0.060 / 1.100 ms |")
    closed = next(line for line in lines if "closed loop" in line and "feature" in line)
    assert "| 600 req/s (0.75 x ceiling) |" in closed and closed.endswith("| 0.500 / 0.050 / 0.400 ms |")
    first = next(line for line in lines if "first request after a PostgreSQL restart" in line)
    assert "9.5 ms = 3.80 x warm p50 (2.50 ms), answered 503; 4 of the first 51 requests failed" in first
    assert "≤ 2 x warm p50: missed" in first
    l1_open = next(line for line in lines if "10 of 1,000 hot keys" in line)
    assert "L1 on (max age 5 s); 88% of keys from memory | 200 req/s | p50 2.0 ms, p99 4.0 ms" in l1_open
    l1_closed = next(line for line in lines if "closed loop, L1 on" in line)
    assert "91% of keys from memory | 1,200 req/s (1.50 x ceiling) |" in l1_closed
    rewarmed = next(line for line in lines if "once it warmed up again" in line)
    assert "(1.2 s after the restart)" in rewarmed and "4.0 ms = 1.60 x warm p50" in rewarmed and "≤ 2 x warm p50: met" in rewarmed
    started = next(line for line in lines if "service started after it" in line)
    assert '| not ready after 60 s; /readyz said: {"a": "b\\|c"} | ≤ 2 x warm p50: missed |' in started
    assert run.verdict_line(results) == "Targets missed: features_after_restart_kept; features_after_restart_started."
