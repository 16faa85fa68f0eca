"""`scripts/bench-semantic`: the semantic cache measured, to choose its index (docs/semantic.md).

On a stack of its own (PostgreSQL with pgvector, PgBouncer, the service), for each dimension
and each size (the cache grown in place, 1,000 users sharing it evenly):

1. the data: clustered synthetic embeddings, not uniform noise (where every point is about
   as far from every other, and recall means nothing): ``TOPICS`` topic centroids, plus two
   noise vectors drawn from pools (so that prompts also form sub-clusters within a topic);
2. queries, half *near duplicates* (one of the user's own entries plus a little noise: a
   prompt said again in other words) and half *novel* prompts (a topic centroid plus fresh
   noise: the nearest entry is a sibling, farther than any sensible maxDistance);
3. the exact answer of each query: the service's own statement (store.py), which scans the
   user's rows through the lookup index;
4. an HNSW index (``vector_cosine_ops``, one per partition) on the same rows, its build time
   and size, and each query again through it with pgvector 0.8's iterative scans
   (``hnsw.iterative_scan = relaxed_order``): recall@1 against the exact answer, and latency;
5. ``POST /v1/cache/{contentType}/similar`` over HTTP at a fixed open-loop rate (latency from
   each request's scheduled time), and the cost an embedding adds to a PUT.

Figures go to stdout as JSON, progress to stderr; ``--out`` adds (or replaces) the semantic
section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from cachesvc import auth
from cachesvc.bench import loadgen
from cachesvc.bench.measure import Service, user_uuid
from cachesvc.bench.report import machine, say
from cachesvc.cache.statements import SemanticStatements, sign_bits
from cachesvc.localstack import SUPERUSER, LocalStack
from cachesvc.localstack.postgres import bundled_pg_bindir, find_pg_bindir

USERS = 1000
TOPICS = 64
POOL = 2048  # noise vectors in each of the two pools: 4M combinations per topic
SPREAD = 0.7  # per-component standard deviation of an entry around its topic (centroid: 1)
JITTER = 0.15  # of a near duplicate around the entry it repeats
CONTENT_TYPE = "chapter"
SECTION_START, SECTION_END = "<!-- semantic: scripts/bench-semantic -->", "<!-- /semantic -->"


def _gauss_vectors(rng: random.Random, n: int, dim: int, sigma: float) -> list[str]:
    return ["[" + ",".join(f"{rng.gauss(0, sigma):.5f}" for _ in range(dim)) + "]" for _ in range(n)]


def prepare(conn: psycopg.Connection, dim: int, seed: int = 42) -> None:
    """The generator's tables (schema ``bench``): centroids, two noise pools, the jitter pool."""
    rng = random.Random(seed)
    conn.execute("DROP SCHEMA IF EXISTS bench CASCADE; CREATE SCHEMA bench")
    pools = {"centroids": (TOPICS, 1.0), "noise_a": (POOL, SPREAD / 2**0.5), "noise_b": (POOL, SPREAD / 2**0.5),
             "jitter": (POOL, JITTER)}
    for table, (n, sigma) in pools.items():
        conn.execute(f"CREATE TABLE bench.{table} (n int PRIMARY KEY, v extensions.vector({dim}))")
        with conn.cursor().copy(f"COPY bench.{table} (n, v) FROM STDIN") as copy:
            for i, v in enumerate(_gauss_vectors(rng, n, dim, sigma)):
                copy.write_row((i, v))


def _draw(g: str, salt: int, modulo: int) -> str:
    """A deterministic pseudo-random draw in [0, modulo) from row number ``g`` (SQL)."""
    return f"mod(abs(hashint8extended({g}::bigint, {salt})), {modulo})::int"


def grow(conn: psycopg.Connection, start: int, stop: int) -> None:
    """Entries ``start`` … ``stop - 1``: user g % USERS + 1, a topic and two noise vectors drawn from g."""
    conn.execute(
        f"""
        INSERT INTO infinite_pages_cache_partitioned
               (user_id, content_type, cache_key, content, token_count, cost_usd, model, expires_at, embedding,
                embedding_bits)
        SELECT ('00000000-0000-4000-8000-' || lpad((mod(g, {USERS}) + 1)::text, 12, '0'))::uuid, %s, 'prompt-' || g,
               '{{"text": "a chapter generated for this prompt"}}', 1500, 0.02, 'gpt-x', now() + interval '30 days',
               c.v + a.v + b.v, extensions.binary_quantize(c.v + a.v + b.v)::bit varying
          FROM generate_series(%s::bigint, %s::bigint - 1) AS g
          JOIN bench.centroids c ON c.n = {_draw('g', 1, TOPICS)}
          JOIN bench.noise_a a ON a.n = {_draw('g', 2, POOL)}
          JOIN bench.noise_b b ON b.n = {_draw('g', 3, POOL)}
        """,
        (CONTENT_TYPE, start, stop),
    )
    conn.execute("VACUUM ANALYZE infinite_pages_cache_partitioned")
    # Written out now, not by a checkpoint in the middle of a measurement (2 GB at 1M entries).
    conn.execute("CHECKPOINT")


def queries(conn: psycopg.Connection, rows: int, count: int, seed: int = 7) -> list[dict]:
    """``count`` queries, half near duplicates of existing entries, half novel prompts."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        if i % 2 == 0:
            g = rng.randrange(rows)
            user = user_uuid(g % USERS + 1)
            vector, = conn.execute(
                """SELECT (e.embedding + j.v)::text FROM infinite_pages_cache_partitioned e, bench.jitter j
                    WHERE e.user_id = %s AND e.content_type = %s AND e.cache_key = %s AND j.n = %s""",
                (user, CONTENT_TYPE, f"prompt-{g}", rng.randrange(POOL))).fetchone()
            out.append({"kind": "near", "user": user, "vector": vector})
        else:
            g = rows + 10_000_000 + i  # beyond every stored row: a new combination
            vector, = conn.execute(
                f"""SELECT (c.v + a.v + b.v)::text FROM bench.centroids c, bench.noise_a a, bench.noise_b b
                     WHERE c.n = {_draw('%s', 1, TOPICS)} AND a.n = {_draw('%s', 2, POOL)} AND b.n = {_draw('%s', 3, POOL)}""",
                (g, g, g)).fetchone()
            out.append({"kind": "novel", "user": user_uuid(rng.randrange(USERS) + 1), "vector": vector})
    return out


def _unit(text: str) -> list[float]:
    values = [float(x) for x in text.strip("[]").split(",")]
    norm = sum(x * x for x in values) ** 0.5
    return [x / norm for x in values]


def _timed(conn: psycopg.Connection, sql: str, params) -> tuple[float, list[tuple]]:
    started = time.perf_counter()
    rows = conn.execute(sql, params).fetchall()
    return time.perf_counter() - started, rows


def _summary(seconds: list[float]) -> dict:
    ordered = sorted(seconds)
    return {"p50_ms": round(loadgen.percentile(ordered, 50) * 1000, 3),
            "p99_ms": round(loadgen.percentile(ordered, 99) * 1000, 3),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 3)}


def exact(conn: psycopg.Connection, qs: list[dict], dim: int, candidates: int = 0) -> tuple[list[tuple | None], dict]:
    """Each query's nearest entry by the service's statement (no maxDistance), and its latency:
    the exact scan (``candidates`` 0), or the prefilter keeping ``candidates`` by sign bits."""
    statements = SemanticStatements.in_schema("extensions")
    statement = statements.similar if candidates else statements.similar_exact
    answers, times = [], []
    for q in qs:
        unit = _unit(q["vector"])
        params = {"user": q["user"], "ct": CONTENT_TYPE, "query": str(unit).replace(" ", ""), "dim": dim,
                  "max_distance": 2.0, "limit": 1, "bits": sign_bits(unit), "candidates": candidates}
        elapsed, rows = _timed(conn, statement, params)
        times.append(elapsed)
        answers.append((rows[0][0], rows[0][12]) if rows else None)
    return answers, _summary(times)


def build_hnsw(conn: psycopg.Connection, dim: int) -> dict:
    """HNSW (m 16, ef_construction 64: pgvector's defaults) on every partition; its build time and size."""
    conn.execute("DROP INDEX IF EXISTS bench_hnsw")
    conn.execute("SET maintenance_work_mem = '4GB'")
    started = time.perf_counter()
    conn.execute(f"CREATE INDEX bench_hnsw ON infinite_pages_cache_partitioned"
                 f" USING hnsw ((embedding::extensions.vector({dim})) extensions.vector_cosine_ops)")
    build_s = time.perf_counter() - started
    size, = conn.execute("SELECT sum(pg_relation_size(relid)) FROM pg_partition_tree('bench_hnsw')").fetchone()
    return {"build_s": round(build_s, 2), "size_mb": round(int(size) / 2**20, 1)}


def hnsw_search(conn: psycopg.Connection, qs: list[dict], dim: int, ef_search: int) -> tuple[list[tuple | None], dict, str]:
    """Each query through the HNSW index, filtered to its user by iterative scans."""
    conn.execute("SET enable_seqscan = off")  # the HNSW scan, even where a small table would be scanned whole
    conn.execute("SET hnsw.iterative_scan = relaxed_order")
    conn.execute(f"SET hnsw.ef_search = {int(ef_search)}")
    # user_id as text: no btree can serve the filter, so the plan is the HNSW scan being measured.
    sql = f"""
        WITH nearest AS MATERIALIZED (
            SELECT id, embedding::extensions.vector({dim}) OPERATOR(extensions.<=>) %(q)s::extensions.vector({dim}) AS d
              FROM infinite_pages_cache_partitioned
             WHERE user_id::text = %(user)s AND content_type = %(ct)s AND expires_at > now()
             ORDER BY embedding::extensions.vector({dim}) OPERATOR(extensions.<=>) %(q)s::extensions.vector({dim})
             LIMIT 1)
        SELECT id, d FROM nearest ORDER BY d LIMIT 1"""
    plan = "\n".join(r[0] for r in conn.execute(
        "EXPLAIN (COSTS OFF) " + sql, {"q": qs[0]["vector"], "user": qs[0]["user"], "ct": CONTENT_TYPE}).fetchall())
    answers, times = [], []
    for q in qs:
        elapsed, rows = _timed(conn, sql, {"q": q["vector"], "user": q["user"], "ct": CONTENT_TYPE})
        times.append(elapsed)
        answers.append((rows[0][0], rows[0][1]) if rows else None)
    conn.execute("RESET enable_seqscan")
    return answers, _summary(times), plan


def storage_comparison(conn: psycopg.Connection, dim: int, rows: int, n_queries: int) -> dict:
    """The exact scan with the embedding in the row (STORAGE MAIN, the migration's) and out of
    it (EXTERNAL, pgvector's default), on the same data; the column is left MAIN."""
    out = {}
    for storage in ("EXTERNAL", "MAIN"):
        conn.execute("TRUNCATE infinite_pages_cache_partitioned")
        conn.execute(f"ALTER TABLE infinite_pages_cache_partitioned ALTER COLUMN embedding SET STORAGE {storage}")
        grow(conn, 0, rows)
        qs = queries(conn, rows, n_queries)
        exact(conn, qs, dim)  # warm
        size, = conn.execute(
            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('infinite_pages_cache_partitioned')").fetchone()
        out[storage.lower()] = {**exact(conn, qs, dim)[1], "table_mb": round(int(size) / 2**20, 1)}
    conn.execute("TRUNCATE infinite_pages_cache_partitioned")
    return out


def recall(truth: list[tuple | None], found: list[tuple | None], qs: list[dict]) -> dict:
    """recall@1: the same entry as the exact answer (or one at the same distance), per kind of query."""
    out = {}
    for kind in ("near", "novel", "all"):
        pairs = [(t, f) for t, f, q in zip(truth, found, qs) if kind in ("all", q["kind"]) and t is not None]
        same = sum(1 for t, f in pairs if f is not None and (f[0] == t[0] or abs(f[1] - t[1]) < 1e-6))
        out[kind] = round(same / len(pairs), 4) if pairs else None
    return out


def similar_requests(secret: str, port: int, qs: list[dict], max_distance: float | None) -> list[bytes]:
    tokens: dict[str, str] = {}
    reqs = []
    for q in qs:
        token = tokens.get(q["user"]) or tokens.setdefault(q["user"], auth.mint(secret, sub=q["user"], ttl_seconds=86400))
        body = {"embedding": json.loads(q["vector"])} | ({"maxDistance": max_distance} if max_distance is not None else {})
        reqs.append(loadgen.build_request("POST", f"/v1/cache/{CONTENT_TYPE}/similar", f"127.0.0.1:{port}",
                                          {"Authorization": f"Bearer {token}"}, json.dumps(body).encode()))
    return reqs


def put_requests(secret: str, port: int, qs: list[dict], with_embedding: bool) -> list[bytes]:
    rng = random.Random(11)
    reqs = []
    for q in qs:
        body = {"content": {"text": "a chapter generated for this prompt"}, "tokenCount": 1500}
        if with_embedding:
            body["embedding"] = json.loads(q["vector"])
        token = auth.mint(secret, sub=q["user"], ttl_seconds=86400)
        reqs.append(loadgen.build_request("PUT", f"/v1/cache/{CONTENT_TYPE}/new-{rng.randrange(10**9)}",
                                          f"127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}, json.dumps(body).encode()))
    return reqs


def get_requests(secret: str, port: int, rows: int, count: int = 200) -> list[bytes]:
    """GETs of stored entries: the fixed cost of a request on this machine, for comparison."""
    rng = random.Random(5)
    reqs = []
    for _ in range(count):
        g = rng.randrange(rows)
        user = user_uuid(g % USERS + 1)
        reqs.append(loadgen.build_request("GET", f"/v1/cache/{CONTENT_TYPE}/prompt-{g}", f"127.0.0.1:{port}",
                                          {"Authorization": f"Bearer {auth.mint(secret, sub=user, ttl_seconds=86400)}"}))
    return reqs


def http_open_loop(service: Service, reqs: list[bytes], rate: int, seconds: int) -> dict:
    asyncio.run(loadgen.closed_loop("127.0.0.1", service.port, reqs, 2, connections=4))  # warm the connections
    result = asyncio.run(loadgen.open_loop("127.0.0.1", service.port, reqs, rate, seconds)).summary()
    return {k: result[k] for k in ("requests", "errors", "statuses", "rps", "p50_ms", "p99_ms", "p999_ms", "target_met")}


def http_similar(service: Service, secret: str, qs: list[dict], rate: int, seconds: int) -> dict:
    return http_open_loop(service, similar_requests(secret, service.port, qs, None), rate, seconds)


def measure(dims: list[int], sizes: list[int], *, hnsw_max_rows: int, max_rows_by_dim: dict[int, int],
            n_queries: int, rate: int, seconds: int, ef_searches: list[int], shared_buffers: str,
            storage_rows: int = 0, candidates: list[int] = (40,)) -> dict:
    bindir = bundled_pg_bindir() or find_pg_bindir()
    home = Path(tempfile.mkdtemp(prefix="cachesvc-bench-semantic-"))
    stack = LocalStack.throwaway(home, bindir=bindir, fsync="on", synchronous_commit="on", full_page_writes="on",
                                 shared_buffers=shared_buffers, max_parallel_maintenance_workers="1")
    results: dict = {"runs": []}
    try:
        say(f"starting PostgreSQL ({bindir}) + PgBouncer")
        stack.start()
        secret = uuid.uuid4().hex + uuid.uuid4().hex
        with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
            conn.execute("SET search_path = public, extensions")  # the generator's vector arithmetic
            for dim in dims:
                say(f"dimension {dim}: generator tables")
                conn.execute("TRUNCATE infinite_pages_cache_partitioned")
                prepare(conn, dim)
                if storage_rows:
                    say(f"dimension {dim}: the embedding in the row or out of it, {storage_rows:,} entries")
                    results.setdefault("storage", {})[str(dim)] = storage_comparison(conn, dim, storage_rows, n_queries)
                    say(f"  -> {json.dumps(results['storage'][str(dim)])}")
                service = Service(stack, home, secret, embedding_dim=str(dim), similarity_candidates=str(candidates[0]))
                try:
                    if dim == dims[0]:
                        results["put_cost"] = {}
                    have = 0
                    for size in sizes:
                        if size > max_rows_by_dim.get(dim, size):
                            continue
                        say(f"dimension {dim}: growing to {size:,} entries")
                        started = time.perf_counter()
                        grow(conn, have, size)
                        have = size
                        run: dict = {"dim": dim, "rows": size, "seed_s": round(time.perf_counter() - started, 1)}
                        table_mb, = conn.execute(
                            "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('infinite_pages_cache_partitioned')"
                        ).fetchone()
                        run["table_mb"] = round(int(table_mb) / 2**20, 1)
                        qs = queries(conn, size, n_queries)
                        say(f"  exact: {len(qs)} queries")
                        truth, run["exact_sql"] = exact(conn, qs, dim)
                        run["exact_sql_again"] = exact(conn, qs, dim)[1]  # warm
                        run["prefilter"] = {}
                        for n in candidates:
                            say(f"  prefilter, {n} candidates")
                            exact(conn, qs, dim, n)  # warm
                            found, latency = exact(conn, qs, dim, n)
                            run["prefilter"][str(n)] = {"recall_at_1": recall(truth, found, qs), **latency}
                        say(f"  HTTP similar, open loop at {rate} req/s for {seconds}s")
                        run["http_similar"] = http_similar(service, secret, qs, rate, seconds)
                        say(f"  HTTP GET (the same service's fixed cost), open loop at {rate} req/s for {seconds}s")
                        run["http_get"] = http_open_loop(service, get_requests(secret, service.port, size), rate, seconds)
                        if size <= hnsw_max_rows:
                            say("  HNSW build")
                            run["hnsw"] = build_hnsw(conn, dim)
                            for ef in ef_searches:
                                say(f"  HNSW search, ef_search {ef}")
                                found, latency, plan = hnsw_search(conn, qs, dim, ef)
                                found, latency, plan = hnsw_search(conn, qs, dim, ef)  # warm
                                run["hnsw"][f"ef{ef}"] = {"recall_at_1": recall(truth, found, qs), **latency}
                            run["hnsw"]["plan"] = plan
                            conn.execute("DROP INDEX bench_hnsw")
                        say(f"  -> {json.dumps({k: v for k, v in run.items() if k != 'hnsw'})}")
                        results["runs"].append(run)
                    say(f"  PUT with and without an embedding of {dim}, open loop at {rate} req/s")
                    qs = queries(conn, have, 200, seed=3)
                    for label, with_embedding in (("without", False), ("with", True)):
                        reqs = put_requests(secret, service.port, qs, with_embedding)
                        summary = asyncio.run(loadgen.open_loop("127.0.0.1", service.port, reqs, rate, seconds)).summary()
                        results["put_cost"][f"{dim}_{label}"] = {k: summary[k] for k in ("requests", "errors", "p50_ms", "p99_ms")}
                finally:
                    service.stop()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)
    return results


def write_section(out: Path, argv: list[str], results: dict) -> None:
    """Put the figures in ``out`` between the semantic markers (replacing an earlier section)."""
    rows = []
    for r in results["runs"]:
        h = r.get("hnsw", {})
        efs = [k for k in h if k.startswith("ef")]
        hnsw = "; ".join(f"{k}: recall@1 {h[k]['recall_at_1']['all']} (near {h[k]['recall_at_1']['near']},"
                         f" novel {h[k]['recall_at_1']['novel']}), p50 {h[k]['p50_ms']} ms, p99 {h[k]['p99_ms']} ms"
                         for k in efs)
        prefilter = "; ".join(f"{n}: recall@1 {v['recall_at_1']['all']} (near {v['recall_at_1']['near']}, novel"
                              f" {v['recall_at_1']['novel']}), p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms"
                              for n, v in r.get("prefilter", {}).items())
        rows.append(f"| {r['dim']} | {r['rows']:,} | {r['table_mb']} MB | exact: p50 {r['exact_sql_again']['p50_ms']} ms,"
                    f" p99 {r['exact_sql_again']['p99_ms']} ms | {prefilter} | {r['http_similar']['rps']} req/s: p50"
                    f" {r['http_similar']['p50_ms']} ms, p99 {r['http_similar']['p99_ms']} ms (GET: p50"
                    f" {r['http_get']['p50_ms']} ms, p99 {r['http_get']['p99_ms']} ms) |"
                    f" {('build ' + str(h['build_s']) + ' s, ' + str(h['size_mb']) + ' MB; ' + hnsw) if h else 'not built'} |")
    puts = "; ".join(f"{k.replace('_', ' embedding ', 1)}: p50 {v['p50_ms']} ms, p99 {v['p99_ms']} ms"
                     for k, v in results.get("put_cost", {}).items())
    section = (
        f"{SECTION_START}\n## Semantic cache\n\n"
        f"Produced by `scripts/bench-semantic {' '.join(argv)}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
        f"what it does and what the figures decided: [docs/semantic.md](docs/semantic.md).\n\n"
        f"Machine: {machine()}.\n\n"
        f"Data: {USERS:,} users sharing the cache evenly, one content type; {TOPICS} topics; queries half near "
        f"duplicates, half novel prompts; recall@1 against the exact answer.\n\n"
        "| dim | entries | table | exact scan (SQL) | prefilter by candidates (SQL) | HTTP similar, open loop"
        " (the first candidates) | HNSW (iterative scan) |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n" + "\n".join(rows) + "\n\n"
        f"PUT, open loop: {puts}.\n\n"
        f"Raw figures:\n\n```json\n{json.dumps(results, indent=1)}\n```\n{SECTION_END}\n"
    )
    text = out.read_text() if out.exists() else "# Benchmarks\n"
    if SECTION_START in text:
        before, rest = text.split(SECTION_START, 1)
        after = rest.split(SECTION_END, 1)[1].lstrip("\n") if SECTION_END in rest else ""
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    out.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench-semantic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dims", default="384,1536", help="embedding dimensions")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="entries, grown in place")
    parser.add_argument("--max-rows-1536", type=int, default=100_000, help="largest size at dimension 1536")
    parser.add_argument("--hnsw-max-rows", type=int, default=100_000, help="largest size an HNSW index is built at")
    parser.add_argument("--ef-search", default="40,200", help="hnsw.ef_search values measured")
    parser.add_argument("--candidates", default="40,20,80",
                        help="CACHESVC_SIMILARITY_CANDIDATES values measured in SQL; the first is the service's")
    parser.add_argument("--queries", type=int, default=200, help="queries for recall and SQL latency")
    parser.add_argument("--rate", type=int, default=100, help="open-loop rate of the HTTP runs (req/s)")
    parser.add_argument("--seconds", type=int, default=20, help="length of each open-loop run")
    parser.add_argument("--shared-buffers", default="2GB")
    parser.add_argument("--storage-rows", type=int, default=0,
                        help="also compare STORAGE MAIN with EXTERNAL at this many entries (0: skip)")
    parser.add_argument("--out", type=Path, default=None, help="write the section into this file (e.g. BENCHMARKS.md)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    results = measure(
        [int(d) for d in args.dims.split(",")], [int(s) for s in args.sizes.split(",")],
        hnsw_max_rows=args.hnsw_max_rows, max_rows_by_dim={1536: args.max_rows_1536}, n_queries=args.queries,
        rate=args.rate, seconds=args.seconds, ef_searches=[int(e) for e in args.ef_search.split(",")],
        shared_buffers=args.shared_buffers, storage_rows=args.storage_rows,
        candidates=[int(n) for n in args.candidates.split(",")],
    )
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    if args.out is not None:
        write_section(args.out, argv, results)
        say(f"wrote the semantic section of {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
