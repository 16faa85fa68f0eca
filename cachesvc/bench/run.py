"""`cachesvc bench`: the service against the database's own ceiling, side by side, in one run.

It starts the same stack as the tests (its own PostgreSQL, with durability ON, and PgBouncer
in transaction mode), seeds the cache, starts the service as production runs it, and measures:

1. ceiling: pgbench running exactly the service's GET transaction, pipelined, through the
   same PgBouncer, on the same data, at the same concurrency;
2. service GET: closed-loop throughput (wrk), and latency at fixed open-loop rates;
3. service PUT: throughput and latency;
4. with --scale: GET latency again with 10M cache rows.

It prints a table, each open loop with its target (the scheduled rate kept, without errors)
and whether it was met, and writes it, with the machine's description, to BENCHMARKS.md.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

from cachesvc import auth
from cachesvc.bench import loadgen
from cachesvc.features import demo
from cachesvc.localstack import SUPERUSER, LocalStack, ServiceProcess
from cachesvc.migrations import PROJECT_ROOT

USERS = 1000
KEYS_PER_USER = 100
CONTENT = json.dumps({"text": "Once upon a time " * 30, "paragraphs": 12, "style": "whimsical"})


def user_uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def say(msg: str) -> None:
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def seed(stack: LocalStack, users: int, keys: int) -> None:
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO infinite_pages_cache_partitioned
                   (user_id, content_type, cache_key, content, token_count, cost_usd, model, expires_at)
            SELECT ('00000000-0000-4000-8000-' || lpad(u::text, 12, '0'))::uuid, 'chapter', 'key-' || k,
                   %s::jsonb, 1500, 0.02, 'gpt-x', now() + interval '30 days'
              FROM generate_series(1, %s) u, generate_series(1, %s) k
            """,
            (CONTENT, users, keys),
        )
        conn.execute("VACUUM ANALYZE infinite_pages_cache_partitioned")


class Service(ServiceProcess):
    """The service as production runs it (rate limiting off, for the ceiling comparison), ready."""

    def __init__(self, stack: LocalStack, home: Path, secret: str, **settings: str) -> None:
        production = {"env": "production", "jwt_secret": secret, "rate_limit_per_s": "0"}
        super().__init__(stack, home / f"service-{uuid.uuid4().hex[:8]}.log", **(production | settings))
        self.wait_ready(60)


def get_requests(secret: str, port: int, hit_ratio: float = 0.8, count: int = 2000) -> list[bytes]:
    import random

    rng = random.Random(42)
    reqs = []
    tokens = {}
    for _ in range(count):
        u = rng.randint(1, USERS)
        token = tokens.get(u) or tokens.setdefault(u, auth.mint(secret, sub=user_uuid(u), ttl_seconds=86400))
        key = f"key-{rng.randint(1, KEYS_PER_USER)}" if rng.random() < hit_ratio else f"absent-{rng.randint(1, 10**6)}"
        reqs.append(loadgen.build_request("GET", f"/v1/cache/chapter/{key}", f"127.0.0.1:{port}",
                                          {"Authorization": f"Bearer {token}"}))
    return reqs


def put_requests(secret: str, port: int, count: int = 2000) -> list[bytes]:
    import random

    rng = random.Random(7)
    body = json.dumps({"content": json.loads(CONTENT), "tokenCount": 1500, "costUsd": 0.02, "model": "gpt-x"}).encode()
    reqs = []
    for _ in range(count):
        u = rng.randint(1, USERS)
        token = auth.mint(secret, sub=user_uuid(u), ttl_seconds=86400)
        reqs.append(loadgen.build_request("PUT", f"/v1/cache/chapter/new-{rng.randint(1, 10**6)}", f"127.0.0.1:{port}",
                                          {"Authorization": f"Bearer {token}"}, body))
    return reqs


PGBENCH_GET = """\
\\set u random(1, {users})
\\set k random(1, {keys_x})
\\startpipeline
BEGIN;
SELECT set_config('cachesvc.user_id', '00000000-0000-4000-8000-' || lpad(:u::text, 12, '0'), true), set_config('statement_timeout', '5000', true), set_config('idle_in_transaction_session_timeout', '10000', true);
SELECT id, created_at, content_type, cache_key, content::text, metadata::text, token_count, cost_usd::float8, model, hit_count, last_accessed_at, expires_at FROM infinite_pages_cache_partitioned WHERE user_id = ('00000000-0000-4000-8000-' || lpad(:u::text, 12, '0'))::uuid AND content_type = 'chapter' AND cache_key = 'key-' || :k AND expires_at > now() ORDER BY created_at DESC LIMIT 1;
COMMIT;
\\endpipeline
"""


def pgbench_ceiling(stack: LocalStack, home: Path, clients: int, seconds: int) -> dict:
    """TPS of the service's exact GET transaction, run by pgbench through PgBouncer."""
    from cachesvc.localstack import find_pg_bindir

    script = home / "get.sql"
    # 80 % hits, as the service benchmark: keys beyond KEYS_PER_USER do not exist.
    script.write_text(PGBENCH_GET.format(users=USERS, keys_x=int(KEYS_PER_USER / 0.8)))
    env = os.environ | {"PGPASSWORD": stack.passwords["cachesvc_app"]}
    result = subprocess.run(
        [str(find_pg_bindir() / "pgbench"), "-n", "-M", "extended", "-c", str(clients), "-j", "1", "-T", str(seconds),
         "-h", "127.0.0.1", "-p", str(stack.bouncer_port), "-U", "cachesvc_app", "-f", str(script),
         "cachesvc"],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", result.stdout).group(1))
    latency = float(re.search(r"latency average = ([0-9.]+) ms", result.stdout).group(1))
    return {"tps": tps, "latency_avg_ms": latency}


def wrk(port: int, requests: list[bytes], home: Path, connections: int, seconds: int) -> dict | None:
    """Closed-loop maximum throughput with wrk (a C load generator), when it is installed."""
    if not shutil.which("wrk"):
        return None
    lua = home / "requests.lua"
    entries = []
    for raw in requests[:500]:
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ")
        headers = {k: v for k, v in (line.split(": ", 1) for line in lines[1:]) if k not in ("Host", "Content-Length")}
        entries.append((method, path, headers, body.decode()))
    lua.write_text(
        "local reqs = {}\n"
        + "".join(
            f"reqs[{i + 1}] = wrk.format({json.dumps(m)}, {json.dumps(p)}, {{"
            + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in h.items())
            + f"}}, {json.dumps(b) if b else 'nil'})\n"
            for i, (m, p, h, b) in enumerate(entries)
        )
        + "local i = 0\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n"
        + "done = function(summary, latency, requests)\n"
        + "  io.write(string.format('JSON {\"requests\": %d, \"seconds\": %f, \"p50\": %f, \"p99\": %f, \"errors\": %d, \"non2xx\": %d}\\n',"
        + " summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,"
        + " summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status))\n"
        + "end\n"
    )
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(lua), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    data = json.loads(line[5:])
    return {"rps": round(data["requests"] / data["seconds"], 1), "p50_ms": round(data["p50"], 3),
            "p99_ms": round(data["p99"], 3), "errors": data["errors"], "non2xx": data["non2xx"]}


def feature_requests(secret: str, port: int, n_keys: int, rows: int, count: int = 2000) -> list[bytes]:
    import random

    rng = random.Random(n_keys)
    token = auth.mint(secret, sub="bench", role=auth.SERVICE_ROLE, ttl_seconds=86400)
    headers = {"Authorization": f"Bearer {token}"}
    if n_keys == 1:
        return [loadgen.build_request("GET", f"/v1/features/{rng.randint(1, rows)}", f"127.0.0.1:{port}", headers)
                for _ in range(count)]
    return [
        loadgen.build_request("POST", "/v1/features/lookup", f"127.0.0.1:{port}", headers,
                              json.dumps({"entityKeys": [str(rng.randint(1, rows)) for _ in range(n_keys)]}).encode())
        for _ in range(count)
    ]


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
    from cachesvc.localstack import find_pg_bindir, find_pgbouncer

    pg = subprocess.run([str(find_pg_bindir() / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    bouncer = subprocess.run([str(find_pgbouncer()), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kb // 1024 // 1024} GiB; {pg}; {bouncer}; "
            f"Python {platform.python_version()}; server, PgBouncer, service and load generator share the machine")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="cachesvc bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="length of each closed-loop run")
    parser.add_argument("--clients", type=int, default=32, help="concurrency of the closed-loop runs")
    parser.add_argument("--rates", default="300,1000", help="open-loop GET rates (req/s)")
    parser.add_argument("--scale", action="store_true", help="also measure GET with 10M cache rows (slow)")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "BENCHMARKS.md")
    parser.add_argument("--feature-tables", type=int, default=30, help="feature tables for the lookup runs (0: skip)")
    parser.add_argument("--feature-rows", type=int, default=100_000)
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="cachesvc-bench-"))
    stack = LocalStack.throwaway(home, fsync="on", synchronous_commit="on", full_page_writes="on",
                                 shared_buffers="512MB")
    rows: list[tuple[str, str, str]] = []
    results: dict = {}
    try:
        say("starting PostgreSQL + PgBouncer")
        stack.start()
        say(f"seeding {USERS * KEYS_PER_USER:,} cache rows")
        seed(stack, USERS, KEYS_PER_USER)
        secret = uuid.uuid4().hex + uuid.uuid4().hex
        service = Service(stack, home, secret)
        try:
            gets = get_requests(secret, service.port)
            say("warming up")
            asyncio.run(loadgen.closed_loop("127.0.0.1", service.port, gets, 3, connections=8))
            say(f"ceiling: pgbench, {args.clients} clients, {args.seconds}s")
            results["ceiling"] = pgbench_ceiling(stack, home, args.clients, args.seconds)
            say(f"service GET closed loop, {args.clients} connections, {args.seconds}s")
            results["get_closed"] = wrk(service.port, gets, home, args.clients, args.seconds) or asyncio.run(
                loadgen.closed_loop("127.0.0.1", service.port, gets, args.seconds, args.clients)).summary()
            for rate in (int(r) for r in args.rates.split(",")):
                say(f"service GET open loop at {rate} req/s")
                results[f"get_open_{rate}"] = asyncio.run(
                    loadgen.open_loop("127.0.0.1", service.port, gets, rate, args.seconds)).summary()
            puts = put_requests(secret, service.port)
            say("service PUT closed loop")
            results["put_closed"] = wrk(service.port, puts, home, args.clients, args.seconds) or asyncio.run(
                loadgen.closed_loop("127.0.0.1", service.port, puts, args.seconds, args.clients)).summary()
            say("service PUT open loop at 300 req/s")
            results["put_open_300"] = asyncio.run(loadgen.open_loop("127.0.0.1", service.port, puts, 300, args.seconds)).summary()
        finally:
            service.stop()
        if args.feature_tables:
            say(f"feature tables: {args.feature_tables} x {args.feature_rows:,} rows")
            demo.generate(stack.url(SUPERUSER), "features", tables=args.feature_tables, rows=args.feature_rows)
            with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
                conn.execute("ANALYZE")
        service = Service(stack, home, secret)  # feature tables are discovered at start-up
        try:
            for n_keys in (1, 10) if args.feature_tables else ():
                say(f"feature lookup over {args.feature_tables} tables, {n_keys} key(s), open loop at 200 req/s")
                reqs = feature_requests(secret, service.port, n_keys, args.feature_rows)
                results[f"features_{n_keys}key_200"] = asyncio.run(
                    loadgen.open_loop("127.0.0.1", service.port, reqs, 200, args.seconds)).summary()
            if args.scale:
                say("seeding to 10M rows (this takes a while)")
                seed_scale(stack)
                for rate in (int(r) for r in args.rates.split(",")):
                    say(f"service GET open loop at {rate} req/s, 10M rows")
                    results[f"get_open_{rate}_10m"] = asyncio.run(
                        loadgen.open_loop("127.0.0.1", service.port, gets, rate, args.seconds)).summary()
        finally:
            service.stop()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)

    ceiling = results["ceiling"]["tps"]
    get_rps = results["get_closed"]["rps"]
    rows.append(("ceiling: pgbench, the service's GET transaction through PgBouncer",
                 f"{ceiling:,.0f} tx/s", f"avg {results['ceiling']['latency_avg_ms']} ms", ""))
    rows.append(("service GET, closed loop", f"{get_rps:,.0f} req/s ({get_rps / ceiling:.2f} x ceiling)",
                 f"p50 {results['get_closed']['p50_ms']} ms, p99 {results['get_closed']['p99_ms']} ms", ""))
    for key, value in results.items():
        if key.startswith("get_open_"):
            label = key.removeprefix("get_open_").replace("_10m", " req/s, 10M rows")
            label = label if "rows" in label else label + " req/s, 100k rows"
            rows.append((f"service GET, open loop at {label}", f"{value['rps']:,.0f} req/s",
                         f"p50 {value['p50_ms']} ms, p99 {value['p99_ms']} ms, p99.9 {value['p999_ms']} ms", target_cell(value)))
    for n_keys in (1, 10):
        value = results.get(f"features_{n_keys}key_200")
        if value:
            rows.append((f"feature lookup, {args.feature_tables} tables x {args.feature_rows:,} rows, {n_keys} key(s), open loop at 200 req/s",
                         f"{value['rps']:,.0f} req/s", f"p50 {value['p50_ms']} ms, p99 {value['p99_ms']} ms, p99.9 {value['p999_ms']} ms",
                         target_cell(value)))
    put = results["put_closed"]
    rows.append(("service PUT, closed loop", f"{put['rps']:,.0f} req/s", f"p50 {put['p50_ms']} ms, p99 {put['p99_ms']} ms", ""))
    p300 = results["put_open_300"]
    rows.append(("service PUT, open loop at 300 req/s", f"{p300['rps']:,.0f} req/s",
                 f"p50 {p300['p50_ms']} ms, p99 {p300['p99_ms']} ms, p99.9 {p300['p999_ms']} ms", target_cell(p300)))
    table = ("| measurement | throughput | latency | target |\n| --- | --- | --- | --- |\n"
             + "".join(f"| {a} | {b} | {c} | {d} |\n" for a, b, c, d in rows))
    missed = [name for name, value in results.items() if value.get("target_met") is False]
    verdict = (f"Targets: every open loop kept at least {loadgen.RATE_KEPT:.0%} of its scheduled rate without errors."
               if not missed else f"Targets missed: {'; '.join(missed)}.")
    say(verdict)
    sys.stdout.write(table)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    args.out.write_text(
        f"# Benchmarks\n\nProduced by `scripts/bench` (`cachesvc bench {' '.join(argv or sys.argv[1:])}`) on {when}.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Data: {USERS:,} users x {KEYS_PER_USER} entries = {USERS * KEYS_PER_USER:,} rows, ~{len(CONTENT)} B of JSON each; "
        f"GET mix 80 % hits / 20 % misses over all users; PostgreSQL with fsync on. "
        f"Closed loops: {args.clients} connections for {args.seconds} s; open loops: {args.seconds} s at the fixed rate, "
        f"latency from each request's scheduled send time; an open loop's target is at least "
        f"{loadgen.RATE_KEPT:.0%} of its rate, answered without errors.\n\n{table}\n{verdict}\n\n"
        f"Raw figures:\n\n```json\n{json.dumps(results, indent=2)}\n```\n"
    )
    say(f"wrote {args.out}")
    return 0


def target_cell(summary: dict) -> str:
    """An open loop's target and whether it was met, for the table."""
    return f"≥ {summary['target_rps']:,.0f} req/s: {'met' if summary['target_met'] else 'missed'}"


def seed_scale(stack: LocalStack, target: int = 10_000_000) -> None:
    """Grow the cache to ``target`` rows with other users' entries (the measured users stay)."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        have = conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone()[0]
        batch = 1_000_000
        offset = USERS + 1
        while have < target:
            n = min(batch, target - have)
            conn.execute(
                """
                INSERT INTO infinite_pages_cache_partitioned
                       (user_id, content_type, cache_key, content, token_count, expires_at)
                SELECT ('00000000-0000-4000-8000-' || lpad((%s + g / 100)::text, 12, '0'))::uuid, 'chapter',
                       'key-' || (g %% 100), '{"text": "filler"}', 10, now() + interval '30 days'
                  FROM generate_series(0, %s - 1) g
                """,
                (offset, n),
            )
            offset += n // 100 + 1
            have += n
            say(f"  {have:,} rows")
        conn.execute("VACUUM ANALYZE infinite_pages_cache_partitioned")


if __name__ == "__main__":
    raise SystemExit(main())
