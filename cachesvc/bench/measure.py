"""What `cachesvc bench` measures (``scripts/bench``; the command is ``run.py``).

It starts the same stack as the tests (its own PostgreSQL, with durability ON, and PgBouncer
in transaction mode), seeds the cache, starts the service as production runs it, and measures:

1. ceiling: pgbench running the service's GET transaction (``ceiling.py``: generated from
   the statement and the query string the service sends), through the same PgBouncer, on
   the same data, at the same concurrency;
2. service GET: closed-loop throughput (wrk), and latency at fixed open-loop rates;
3. service PUT: throughput and latency;
4. feature lookups over the demo tables, 1 and 10 keys, at a fixed open-loop rate;
5. the feature path against its ceiling, side by side: pgbench running the transaction the
   service sends for ``GET /v1/features/{key}?tables=<every demo table>`` (``ceiling.py``),
   then the service's closed-loop throughput (wrk) of that request, at the same concurrency;
6. the first feature lookup after a PostgreSQL restart against the warm p50 (``restart.py``);
7. the in-process cache of feature rows (``CACHESVC_FEATURES_L1_MAX_AGE_MS``): lookups of
   ``HOT_KEYS`` keys of the demo set, 10 keys a lookup at 200 req/s without it and with it
   (``L1_MAX_AGE_MS``), 1 key at 200 req/s and the closed loop of (5) with it, each with the
   share of keys it answered;
8. with ``scale``: GET latency again with 10M cache rows.

The server CPU per request (service / PgBouncer / PostgreSQL, ``cpu.py``) comes with each
run; a ceiling's is per pgbench transaction (no service: pgbench, like wrk, is not counted).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import uuid
from pathlib import Path

import httpx2
import psycopg

from cachesvc import auth
from cachesvc.bench import cpu, loadgen, restart
from cachesvc.bench.ceiling import pgbench_ceiling, pgbench_feature_ceiling
from cachesvc.bench.report import say
from cachesvc.bench.wrk import wrk
from cachesvc.features import demo
from cachesvc.localstack import SUPERUSER, LocalStack, ServiceProcess

USERS = 1000
KEYS_PER_USER = 100
CONTENT = json.dumps({"text": "Once upon a time " * 30, "paragraphs": 12, "style": "whimsical"})


def user_uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


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
    """The service as production runs it (rate limiting off, for the ceiling comparison), ready
    (unless ``ready=False``: then only started)."""

    def __init__(self, stack: LocalStack, home: Path, secret: str, *, ready: bool = True, **settings: str) -> None:
        production = {"env": "production", "jwt_secret": secret, "rate_limit_per_s": "0"}
        super().__init__(stack, home / f"service-{uuid.uuid4().hex[:8]}.log", **(production | settings))
        if ready:
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


def feature_headers(secret: str) -> dict[str, str]:
    token = auth.mint(secret, sub="bench", role=auth.SERVICE_ROLE, ttl_seconds=86400)
    return {"Authorization": f"Bearer {token}"}


def feature_paths(rows: int, tables: list[str], count: int = 2000, seed: int = 30) -> list[str]:
    """``GET /v1/features/{key}?tables=<tables>`` paths, keys 1..``rows`` at random."""
    import random

    rng = random.Random(seed)
    return [f"/v1/features/{rng.randint(1, rows)}?tables={','.join(tables)}" for _ in range(count)]


def feature_requests(secret: str, port: int, n_keys: int, rows: int, count: int = 2000, *, hot: int = 0) -> list[bytes]:
    """Feature lookups of ``n_keys`` keys at random over every table: keys 1..``rows``, or with
    ``hot`` only the ``hot`` keys of a fixed random set (the traffic an in-process cache is for)."""
    import random

    rng = random.Random(n_keys)
    pool = random.Random(hot).sample(range(1, rows + 1), hot) if hot else None

    def key() -> int:
        return rng.choice(pool) if pool else rng.randint(1, rows)

    headers = feature_headers(secret)
    if n_keys == 1:
        return [loadgen.build_request("GET", f"/v1/features/{key()}", f"127.0.0.1:{port}", headers)
                for _ in range(count)]
    return [
        loadgen.build_request("POST", "/v1/features/lookup", f"127.0.0.1:{port}", headers,
                              json.dumps({"entityKeys": [str(key()) for _ in range(n_keys)]}).encode())
        for _ in range(count)
    ]


HOT_KEYS = 1000
L1_MAX_AGE_MS = 5000


def l1_hit_ratio(service: Service, run) -> dict:
    """``run()``'s summary with the share of lookup keys the L1 answered meanwhile (/metrics)."""
    def counts() -> tuple[float, float]:
        text = httpx2.get(service.url + "/metrics", timeout=10).text
        found = dict(line.rsplit(" ", 1) for line in text.splitlines()
                     if line.startswith(("cachesvc_feature_l1_hits_total ", "cachesvc_feature_l1_misses_total ")))
        return float(found["cachesvc_feature_l1_hits_total"]), float(found["cachesvc_feature_l1_misses_total"])

    hits0, misses0 = counts()
    summary = run()
    hits1, misses1 = counts()
    asked = (hits1 - hits0) + (misses1 - misses0)
    return summary | {"l1_hit_ratio": round((hits1 - hits0) / asked, 3) if asked else None}


def feature_l1(stack: LocalStack, home: Path, secret: str, seconds: int, clients: int, rows: int, tables: list[str],
               plain: Service) -> dict:
    """The in-process cache's figures (module docstring): ``HOT_KEYS`` keys, 10 keys a lookup at
    200 req/s without it (``plain``) and with it, 1 key at 200 req/s and closed loop with it."""
    results = {}
    hot10 = feature_requests(secret, plain.port, 10, rows, hot=HOT_KEYS)
    say(f"feature lookup, 10 of {HOT_KEYS:,} hot keys, open loop at 200 req/s, without the L1")
    results["features_hot_10key_200"] = with_cpu(stack, plain, lambda: asyncio.run(
        loadgen.open_loop("127.0.0.1", plain.port, hot10, 200, seconds)).summary())
    service = Service(stack, home, secret, features_l1_max_age_ms=str(L1_MAX_AGE_MS))
    try:
        for n_keys in (1, 10):
            say(f"feature lookup, {n_keys} of {HOT_KEYS:,} hot keys, open loop at 200 req/s, L1 on")
            reqs = feature_requests(secret, service.port, n_keys, rows, hot=HOT_KEYS)
            results[f"features_l1_{n_keys}key_200"] = l1_hit_ratio(service, lambda reqs=reqs: with_cpu(stack, service, lambda: asyncio.run(
                loadgen.open_loop("127.0.0.1", service.port, reqs, 200, seconds)).summary()))
        say(f"feature lookup, 1 of {HOT_KEYS:,} hot keys x {len(tables)} tables, closed loop, L1 on")
        headers = feature_headers(secret)
        import random
        rng = random.Random(HOT_KEYS)
        keys = rng.sample(range(1, rows + 1), HOT_KEYS)
        reqs = [loadgen.build_request("GET", f"/v1/features/{rng.choice(keys)}?tables={','.join(tables)}",
                                      f"127.0.0.1:{service.port}", headers) for _ in range(2000)]
        results["features_l1_closed"] = l1_hit_ratio(service, lambda: with_cpu(
            stack, service, lambda: closed_loop(service, reqs, home, clients, seconds)))
    finally:
        service.stop()
    return results


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


def components(stack: LocalStack, service: Service) -> dict[str, int]:
    """The server processes whose CPU a run is charged: the service, PgBouncer, PostgreSQL."""
    return {"service": service.proc.pid, "pgbouncer": stack.bouncer.proc.pid, "postgres": stack.postgres.proc.pid}


def with_cpu(stack: LocalStack, service: Service, run) -> dict:
    """``run()``'s summary, with the server CPU per request of each component (``cpuMsPerRequest``)."""
    with cpu.measured(components(stack, service)) as used:
        summary = run()
    return summary | {"cpu_ms_per_request": cpu.per_request(used, summary.get("requests") or 0)}


def ceiling_with_cpu(stack: LocalStack, run) -> dict:
    """A pgbench run's summary, with PgBouncer's and PostgreSQL's CPU per transaction."""
    servers = {"pgbouncer": stack.bouncer.proc.pid, "postgres": stack.postgres.proc.pid}
    with cpu.measured(servers) as used:
        summary = run()
    return summary | {"cpu_ms_per_request": cpu.per_request(used, summary["transactions"])}


def closed_loop(service: Service, requests: list[bytes], home: Path, clients: int, seconds: int) -> dict:
    """Closed-loop throughput: wrk when installed, else the built-in generator."""
    return wrk(service.port, requests, home, clients, seconds) or asyncio.run(
        loadgen.closed_loop("127.0.0.1", service.port, requests, seconds, clients)).summary()


def measure(*, seconds: int, clients: int, rates: list[int], scale: bool, feature_tables: int, feature_rows: int) -> dict:
    """Every figure of the benchmark, by name (see the module docstring), on a stack of its own."""
    home = Path(tempfile.mkdtemp(prefix="cachesvc-bench-"))
    stack = LocalStack.throwaway(home, fsync="on", synchronous_commit="on", full_page_writes="on",
                                 shared_buffers="512MB")
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
            say(f"ceiling: pgbench, {clients} clients, {seconds}s")
            results["ceiling"] = ceiling_with_cpu(stack, lambda: pgbench_ceiling(
                stack, home, clients, seconds, USERS, int(KEYS_PER_USER / 0.8)))
            say(f"service GET closed loop, {clients} connections, {seconds}s")
            results["get_closed"] = with_cpu(stack, service, lambda: closed_loop(service, gets, home, clients, seconds))
            for rate in rates:
                say(f"service GET open loop at {rate} req/s")
                results[f"get_open_{rate}"] = with_cpu(stack, service, lambda rate=rate: asyncio.run(
                    loadgen.open_loop("127.0.0.1", service.port, gets, rate, seconds)).summary())
            puts = put_requests(secret, service.port)
            say("service PUT closed loop")
            results["put_closed"] = with_cpu(stack, service, lambda: closed_loop(service, puts, home, clients, seconds))
            say("service PUT open loop at 300 req/s")
            results["put_open_300"] = with_cpu(stack, service, lambda: asyncio.run(
                loadgen.open_loop("127.0.0.1", service.port, puts, 300, seconds)).summary())
        finally:
            service.stop()
        if feature_tables:
            say(f"feature tables: {feature_tables} x {feature_rows:,} rows")
            demo.generate(stack.url(SUPERUSER), "features", tables=feature_tables, rows=feature_rows)
            with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
                conn.execute("ANALYZE")
        service = Service(stack, home, secret)  # feature tables are discovered at start-up
        try:
            for n_keys in (1, 10) if feature_tables else ():
                say(f"feature lookup over {feature_tables} tables, {n_keys} key(s), open loop at 200 req/s")
                reqs = feature_requests(secret, service.port, n_keys, feature_rows)
                results[f"features_{n_keys}key_200"] = with_cpu(stack, service, lambda reqs=reqs: asyncio.run(
                    loadgen.open_loop("127.0.0.1", service.port, reqs, 200, seconds)).summary())
            if feature_tables:
                tables = demo.table_names(feature_tables)
                headers = feature_headers(secret)
                paths = feature_paths(feature_rows, tables)
                say(f"feature ceiling: pgbench, 1 key x {feature_tables} tables, {clients} clients, {seconds}s")
                results["features_ceiling"] = ceiling_with_cpu(stack, lambda: pgbench_feature_ceiling(
                    stack, home, clients, seconds, tables, feature_rows))
                say(f"service feature lookup closed loop, 1 key x {feature_tables} tables, {clients} connections, {seconds}s")
                reqs = [loadgen.build_request("GET", path, f"127.0.0.1:{service.port}", headers) for path in paths]
                results["features_closed"] = with_cpu(stack, service, lambda: closed_loop(service, reqs, home, clients, seconds))
                say("feature lookup: first request after a PostgreSQL restart, against the warm p50")
                after, service = restart.after_restart(stack, service, lambda: Service(stack, home, secret, ready=False),
                                                       paths, headers)
                results |= {f"features_after_restart_{case}": value for case, value in after.items()}
                if service is not None:
                    results |= feature_l1(stack, home, secret, seconds, clients, feature_rows, tables, service)
            if scale:
                service = service or Service(stack, home, secret)
                say("seeding to 10M rows (this takes a while)")
                seed_scale(stack)
                for rate in rates:
                    say(f"service GET open loop at {rate} req/s, 10M rows")
                    results[f"get_open_{rate}_10m"] = asyncio.run(
                        loadgen.open_loop("127.0.0.1", service.port, gets, rate, seconds)).summary()
        finally:
            if service is not None:
                service.stop()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    return results
