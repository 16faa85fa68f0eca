"""Benchmark of the feature read path on a stack of its own (``scripts/bench-features``).

It starts a throwaway PostgreSQL + PgBouncer with durability on, generates the demo data
set (30 tables x 100k rows by default), and prints, as JSON on stdout (progress on stderr):

- in-process lookups through PgBouncer, p50/p99, 1 and 10 keys over every table, for one
  UNION ALL statement, for one pipeline of a statement per table, and (for reference) for
  one round trip per table, interleaved in the same run;
- over HTTP, at a fixed rate with the shared open loop (``loadgen``), p50/p99, for both strategies;
- cold start after a PostgreSQL restart, with and without warm-up: time to ready, first
  request latency;
- the plan and timing of lookups with and without parallel workers, of a prepared statement
  against an unnamed one (direct connection: PgBouncer in transaction mode rules prepared
  statements out), and of the statement's shape (``key = ANY`` against ``unnest … JOIN``).

Numbers from this machine are for comparing the options side by side, not absolute.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from cachesvc import auth
from cachesvc.bench import loadgen
from cachesvc.bench.report import say
from cachesvc.db.pools import create_pool, open_pool
from cachesvc.features import catalog, demo, warmup
from cachesvc.features.reader import FeatureReader
from cachesvc.localstack import SUPERUSER, LocalStack
from cachesvc.localstack import ServiceProcess as Service

DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


def summary(samples_ms: list[float]) -> dict:
    ordered = sorted(samples_ms)
    return {"n": len(ordered), "p50": round(loadgen.percentile(ordered, 50), 3), "p99": round(loadgen.percentile(ordered, 99), 3),
            "mean": round(statistics.fmean(ordered), 3), "max": round(ordered[-1], 3)}


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from the state on (the name may hold spaces)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of the processes (Linux /proc), in seconds."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def server_pids(stack: LocalStack) -> list[int]:
    """The postmaster and every process it forked (backends, workers)."""
    root = stack.postgres.proc.pid
    pids = [root]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) and int(fields[1]) == root:
            pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU used per call by PostgreSQL, PgBouncer, this process and (optionally) the service."""

    def __init__(self, stack: LocalStack, service_pid: int | None = None) -> None:
        self.stack, self.service_pid = stack, service_pid
        self._before: dict[str, float] = {}

    def _others(self) -> dict[str, float]:
        out = {"postgres": cpu_seconds(server_pids(self.stack)), "pgbouncer": cpu_seconds([self.stack.bouncer.proc.pid])}
        if self.service_pid:
            out["service"] = cpu_seconds([self.service_pid])
        return out

    def begin(self) -> None:
        self._before = self._others() | {"client": time.process_time()}  # reading /proc is not counted

    def end(self, calls: int) -> dict[str, float]:
        after = {"client": time.process_time()}
        after |= self._others()
        return {f"{k}CpuMs": round((after[k] - self._before[k]) * 1000 / calls, 3) for k in self._before}


def key_sets(rows: int, keys: int, count: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    return [[str(rng.randint(1, rows)) for _ in range(keys)] for _ in range(count)]


# -- in-process ---------------------------------------------------------------------------------


async def in_process(stack: LocalStack, rows: int, iterations: int) -> dict:
    settings = stack.settings(pool_size=4)
    pool = create_pool(settings.database)
    await open_pool(pool, settings.database)
    try:
        async with pool.connection() as conn:
            found = await catalog.discover(conn, "features")
        reader = FeatureReader(pool, found)
        samples = await warmup.sample_keys(reader)
        await warmup.warm_up(reader, prewarm_fraction=0.5, hot_key_limit=0, lookups=400, concurrency=4, samples=samples)
        tables = list(found.tables.values())

        async def one_per_table(keys):
            for table in tables:
                await reader.lookup(keys, [table])

        modes = {
            "statement": lambda keys: reader.lookup(keys, strategy="statement"),
            "pipeline": lambda keys: reader.lookup(keys, strategy="pipeline"),
            "roundTripPerTable": one_per_table,
        }
        results: dict = {}
        meter = CpuMeter(stack)
        for n_keys in (1, 10):
            timings: dict[str, list[float]] = {m: [] for m in modes}
            cpu: dict[str, dict[str, float]] = {m: {} for m in modes}
            blocks = 10
            for block in range(blocks):
                for mode, run in modes.items():
                    count = iterations // blocks if mode != "roundTripPerTable" else max(1, iterations // blocks // 5)
                    sets = key_sets(rows, n_keys, count, seed=block * 100 + n_keys)
                    meter.begin()
                    for keys in sets:
                        start = time.perf_counter()
                        await run(keys)
                        timings[mode].append((time.perf_counter() - start) * 1000)
                    for k, v in meter.end(1).items():
                        cpu[mode][k] = cpu[mode].get(k, 0) + v
            results[f"{n_keys}key"] = {
                mode: summary(t) | {k: round(v / len(t), 3) for k, v in cpu[mode].items()} for mode, t in timings.items()
            }
            say(f"in-process {n_keys} key(s): " + ", ".join(f"{m} p50 {r['p50']} ms" for m, r in results[f"{n_keys}key"].items()))
        return {"tables": len(tables), **results}
    finally:
        await pool.close()


# -- the service over HTTP ---------------------------------------------------------------------


def open_loop(url: str, token: str, bodies: list[dict], rate: float, meter: CpuMeter) -> dict:
    """POST the bodies at ``rate`` per second whatever the answers take (``loadgen.open_loop``)."""
    host, port = urlsplit(url).hostname, urlsplit(url).port
    headers = {"Authorization": f"Bearer {token}"}
    requests = [loadgen.build_request("POST", "/v1/features/lookup", f"{host}:{port}", headers, json.dumps(body).encode())
                for body in bodies]
    asyncio.run(loadgen.closed_loop(host, port, requests[:50], 0.25, connections=1))  # warm the path up first
    meter.begin()
    result = asyncio.run(loadgen.open_loop(host, port, requests, rate, len(requests) / rate))
    cpu = meter.end(len(requests))
    failed = sum(n for status, n in result.statuses.items() if status != 200)
    return summary([s * 1000 for s in result.latencies]) | {"errors": result.errors + failed, "rate": rate} | cpu


def over_http(stack: LocalStack, workdir: Path, rows: int, rate: float, seconds: float) -> dict:
    token = auth.mint(stack.settings().jwt_secret, sub="bench", role=auth.SERVICE_ROLE)
    results: dict = {}
    for strategy in ("statement", "pipeline"):
        service = Service(stack, workdir / f"http-{strategy}.log", features_strategy=strategy)
        try:
            service.wait_ready()
            for n_keys in (1, 10):
                bodies = [{"entityKeys": keys} for keys in key_sets(rows, n_keys, int(rate * seconds), seed=n_keys)]
                result = open_loop(service.url, token, bodies, rate, CpuMeter(stack, service.proc.pid))
                results.setdefault(f"{n_keys}key", {})[strategy] = result
                say(f"HTTP {strategy} {n_keys} key(s) at {rate}/s: p50 {result['p50']} ms, p99 {result['p99']} ms")
        finally:
            service.stop()
    return results


def cold_start(stack: LocalStack, workdir: Path, rows: int) -> dict:
    import httpx2

    token = auth.mint(stack.settings().jwt_secret, sub="bench", role=auth.SERVICE_ROLE)
    headers = {"Authorization": f"Bearer {token}"}
    results = {}
    for label, warm in (("withWarmup", "true"), ("withoutWarmup", "false")):
        say(f"restarting PostgreSQL (cold shared buffers; the OS page cache stays warm), then the service {label}")
        stack.postgres.stop()
        stack.postgres.start()
        service = Service(stack, workdir / f"cold-{label}.log", features_warmup=warm, features_warmup_wait_s="120")
        try:
            ready_s = service.wait_ready()
            latencies = []
            with httpx2.Client(base_url=service.url, headers=headers, timeout=30) as client:
                for keys in key_sets(rows, 10, 50, seed=99):
                    start = time.perf_counter()
                    res = client.post("/v1/features/lookup", json={"entityKeys": keys})
                    latencies.append((time.perf_counter() - start) * 1000)
                    assert res.status_code == 200, res.text
            results[label] = {
                "timeToReadyS": round(ready_s, 3),
                "firstRequestMs": round(latencies[0], 3),
                "first10RequestsMaxMs": round(max(latencies[:10]), 3),
                "requests11to50": summary(latencies[10:]),
            }
            say(f"cold start {label}: ready after {ready_s:.2f} s, first request {latencies[0]:.1f} ms")
        finally:
            service.stop()
    return results


# -- planner and protocol checks (direct connection) ----------------------------------------------


def plan_checks(stack: LocalStack, rows: int, iterations: int) -> dict:
    with psycopg.connect(stack.url("cachesvc_app", direct=True), autocommit=True) as conn:
        found = catalog.discover_sync(conn, "features")
        reader = FeatureReader(None, found)  # only its SQL
        tables = list(found.tables.values())
        out: dict = {"roleSetting": conn.execute("SHOW max_parallel_workers_per_gather").fetchone()[0]}
        # random_page_cost: the planner's default, and what the service sets for its lookups
        for cost, n_keys in (("4", 10), ("4", 100), ("1.1", 10), ("1.1", 100)):
            conn.execute(f"SET random_page_cost = {cost}")
            keysets = key_sets(rows, n_keys, iterations, seed=5)
            timings: dict[str, list[float]] = {"2": [], "0": []}
            plans = {}
            for block in range(10):  # interleaved, so that other load on the machine hits both alike
                for workers in ("2", "0"):
                    conn.execute(f"SET max_parallel_workers_per_gather = {workers}")
                    if block == 0:
                        stmt, params = reader.statement(keysets[0], tables)
                        plans[workers] = "\n".join(r[0] for r in conn.execute(sql_explain(stmt), params))
                    for keys in keysets[block::10]:
                        stmt, params = reader.statement(keys, tables)
                        start = time.perf_counter()
                        conn.execute(stmt, params).fetchall()
                        timings[workers].append((time.perf_counter() - start) * 1000)
            out[f"{n_keys}key_randomPageCost{cost}"] = {
                f"workers{w}": summary(t) | {"parallelPlan": "Gather" in plans[w]} for w, t in timings.items()
            }
        conn.execute("RESET max_parallel_workers_per_gather; RESET random_page_cost")
    prepared = {}
    for label, threshold in (("unnamed", None), ("prepared", 0)):
        with psycopg.connect(stack.url("cachesvc_app", direct=True), autocommit=True, prepare_threshold=threshold) as conn:
            for n_keys in (1, 10):
                timings = []
                for keys in key_sets(rows, n_keys, iterations, seed=6):
                    stmt, params = reader.statement(keys, tables)
                    start = time.perf_counter()
                    conn.execute(stmt, params).fetchall()
                    timings.append((time.perf_counter() - start) * 1000)
                prepared.setdefault(f"{n_keys}key", {})[label] = summary(timings)
            if threshold is not None:
                prepared["plans"] = [
                    {"statement": q[:60], "genericPlans": g, "customPlans": c}
                    for q, g, c in conn.execute("SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements")
                ]
    out["prepared"] = prepared
    ten = out["10key_randomPageCost4"]
    say(f"parallel workers 2 vs 0 (10 keys): p50 {ten['workers2']['p50']} vs {ten['workers0']['p50']} ms;"
        f" prepared vs unnamed (10 keys): p50 {prepared['10key']['prepared']['p50']} vs {prepared['10key']['unnamed']['p50']} ms")
    return out


def union_sql(tables, shape: str) -> sql.Composed:
    """Shapes the reader does not use: a UNION ALL branch per table, by ``= ANY`` or by joining unnest()."""
    branch = {
        "unionAny": "SELECT {i}, t.{key}::text, row_to_json(t)::text FROM {table} AS t WHERE t.{key} = ANY({keys}::{type}[])",
        "unionUnnestJoin": "SELECT {i}, q.ord, row_to_json(t)::text FROM unnest({keys}::{type}[]) WITH ORDINALITY AS q(k, ord)"
        " JOIN {table} AS t ON t.{key} = q.k",
    }[shape]
    return sql.SQL(" UNION ALL ").join(
        sql.SQL(branch).format(
            i=sql.Literal(i), keys=sql.Placeholder(t.key_type), type=sql.SQL(t.key_type), table=t.ident, key=sql.Identifier(t.key)
        )
        for i, t in enumerate(tables)
    )


def shapes(stack: LocalStack, rows: int, iterations: int) -> dict:
    """The reader's single statement (a subquery per table) against two UNION ALL shapes, interleaved."""
    out: dict = {}
    with psycopg.connect(stack.url("cachesvc_app", direct=True), autocommit=True, prepare_threshold=None) as conn:
        conn.execute("SET random_page_cost = 1.1")  # as the service's lookups
        found = catalog.discover_sync(conn, "features")
        reader = FeatureReader(None, found)
        tables = list(found.tables.values())
        others = {shape: union_sql(tables, shape) for shape in ("unionAny", "unionUnnestJoin")}
        for n_keys in (1, 10, 100):
            keysets = key_sets(rows, n_keys, iterations if n_keys < 100 else iterations // 5, seed=7)
            timings: dict[str, list[float]] = {"subqueries": [], **{shape: [] for shape in others}}
            for block in range(10):
                for shape in timings:
                    for keys in keysets[block::10]:
                        stmt, params = reader.statement(keys, tables)
                        if shape in others:
                            stmt = others[shape]
                        start = time.perf_counter()
                        conn.execute(stmt, params).fetchall()
                        timings[shape].append((time.perf_counter() - start) * 1000)
            out[f"{n_keys}key"] = {shape: summary(t) for shape, t in timings.items()}
        conn.execute("RESET random_page_cost; SET max_parallel_workers_per_gather = 2")
        keys = key_sets(rows, 10, 1, seed=8)[0]
        params = reader.aligned(keys, tables)
        for shape, stmt in (("subqueries", reader.statement_for(tables)), *others.items()):
            plan = "\n".join(r[0] for r in conn.execute(sql_explain(stmt), params))
            out.setdefault("parallelPlanFor10KeysWithDefaultCosts", {})[shape] = "Gather" in plan
    one = out["1key"]
    say("statement shape (1 key) p50: " + ", ".join(f"{k} {v['p50']} ms" for k, v in one.items()))
    return out


def sql_explain(stmt: sql.Composed | str) -> sql.Composed:
    return sql.SQL("EXPLAIN ") + (sql.SQL(stmt) if isinstance(stmt, str) else stmt)


# -- main -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-features", description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=30)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--iterations", type=int, default=1000, help="in-process lookups per strategy and key count")
    parser.add_argument("--rate", type=float, default=200, help="HTTP requests per second")
    parser.add_argument("--seconds", type=float, default=10, help="duration of each HTTP run")
    parser.add_argument("--shared-buffers", default="1GB")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="cachesvc-bench-"))
    stack = LocalStack.throwaway(home, **DURABLE, shared_buffers=args.shared_buffers)
    report: dict = {"tables": args.tables, "rows": args.rows, "postgres": DURABLE | {"shared_buffers": args.shared_buffers},
                    "cpus": os.cpu_count(), "loadAverageAtStart": [round(x, 2) for x in os.getloadavg()]}
    try:
        say(f"starting a stack in {home}")
        stack.start()
        with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
            report["postgresVersion"] = conn.execute("SHOW server_version").fetchone()[0]
        began = time.perf_counter()
        say(f"generating {args.tables} tables x {args.rows} rows")
        made = demo.generate(stack.url(SUPERUSER), "features", tables=args.tables, rows=args.rows)
        report["generateSeconds"] = round(time.perf_counter() - began, 1)
        with psycopg.connect(stack.url(SUPERUSER)) as conn:
            report["dataBytes"] = conn.execute(
                "SELECT sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c"
                " WHERE c.relnamespace = 'features'::regnamespace AND c.relkind = 'r'"
            ).fetchone()[0]
        assert len(made["created"]) == args.tables
        report["inProcess"] = asyncio.run(in_process(stack, args.rows, args.iterations))
        report["http"] = over_http(stack, home, args.rows, args.rate, args.seconds)
        report["coldStart"] = cold_start(stack, home, args.rows)
        report["planner"] = plan_checks(stack, args.rows, min(args.iterations, 500))
        report["shapes"] = shapes(stack, args.rows, min(args.iterations, 500))
        report["loadAverageAtEnd"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
