"""`scripts/bench-replica`: what reading from a hot standby costs a request, measured side by side.

On a stack of its own (durability on, the cache seeded as by `scripts/bench`, demo feature
tables) with a hot standby and its PgBouncer, two service processes run at once: one without
``CACHESVC_READ_DATABASE_URL`` (every read on the primary) and one with it (reads on the
standby). Rounds alternate between them at a fixed open-loop rate: cache GETs (80 % hits) and
one-key feature lookups. A last run stops the standby's PgBouncer and measures the replica
service again, reading from the primary by fallback.

On one machine the standby shares the cores of the primary, so this measures the overhead of
routing (the router's checks, the monitor's lag checks, the extra PgBouncer hop), not the read
capacity a standby on its own server adds. JSON on stdout, progress on stderr; with --out, a
Markdown report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg

from cachesvc.bench import loadgen
from cachesvc.bench.measure import KEYS_PER_USER, USERS, Service, feature_requests, get_requests, seed
from cachesvc.bench.report import machine, say
from cachesvc.features import demo
from cachesvc.localstack import SUPERUSER, LocalStack


def measure(service: Service, requests: list[bytes], rate: int, seconds: int) -> dict:
    return asyncio.run(loadgen.open_loop("127.0.0.1", service.port, requests, rate, seconds, connections=32)).summary()


def routes(service: Service) -> dict[str, float]:
    """Reads so far by the server that answered them (the service's own count)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{service.port}/metrics", timeout=5).read().decode()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "cachesvc_read_routes_total":
                key = f"{sample.labels['target']}:{sample.labels['reason']}"
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def pooled(runs: list[dict]) -> dict:
    """Median over rounds of each figure (rounds alternate, so drift hits both sides alike)."""
    keys = ("rps", "p50_ms", "p99_ms", "p999_ms")
    return {k: round(statistics.median(r[k] for r in runs), 3) for k in keys} | {
        "rounds": len(runs), "errors": sum(r["errors"] for r in runs), "target_met": all(r["target_met"] for r in runs),
        "non2xx_or_404": sum(n for r in runs for s, n in r["statuses"].items() if s not in (200, 404)),
    }


def run(args: argparse.Namespace) -> dict:
    home = Path(tempfile.mkdtemp(prefix="cachesvc-bench-replica-"))
    stack = LocalStack.throwaway(home, fsync="on", synchronous_commit="on", full_page_writes="on", shared_buffers="256MB")
    try:
        say("starting PostgreSQL + PgBouncer")
        stack.start()
        say(f"seeding {USERS * KEYS_PER_USER:,} cache rows and {args.feature_tables} feature tables")
        seed(stack, USERS, KEYS_PER_USER)
        demo.generate(stack.url(SUPERUSER), "features", tables=args.feature_tables, rows=args.feature_rows)
        with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
            conn.execute("ANALYZE")
        say("starting the hot standby and its PgBouncer")
        stack.start_standby()
        stack.standby.wait_replayed(stack.postgres)
        secret = uuid.uuid4().hex + uuid.uuid4().hex
        services = {
            "primary only": Service(stack, home, secret, read_database_url=""),
            "with replica": Service(stack, home, secret),
        }
        try:
            return compare(stack, services, secret, args)
        finally:
            for service in services.values():
                service.stop()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def compare(stack: LocalStack, services: dict[str, Service], secret: str, args: argparse.Namespace) -> dict:
    workloads = {
        "cache GET": lambda port: get_requests(secret, port),
        "feature lookup, 1 key": lambda port: feature_requests(secret, port, 1, args.feature_rows),
    }
    runs: dict[str, dict[str, list[dict]]] = {w: {name: [] for name in services} for w in workloads}
    for workload, build in workloads.items():
        requests = {name: build(service.port) for name, service in services.items()}
        for name, service in services.items():  # warm both paths up
            measure(service, requests[name], args.rate, 2)
        for round_ in range(args.rounds):
            for name, service in services.items():
                say(f"{workload}: {name}, round {round_ + 1}/{args.rounds} at {args.rate} req/s")
                runs[workload][name].append(measure(service, requests[name], args.rate, args.seconds))
    results = {w: {name: pooled(r) for name, r in by_service.items()} for w, by_service in runs.items()}
    results["routes (with replica)"] = routes(services["with replica"])
    say("stopping the standby's PgBouncer: the replica service falls back to the primary")
    stack.standby.bouncer.stop()
    try:
        replica = services["with replica"]
        gets = get_requests(secret, replica.port)
        measure(replica, gets, args.rate, 2)
        results["cache GET"]["with replica, standby down"] = pooled(
            [measure(replica, gets, args.rate, args.seconds) for _ in range(args.rounds)]
        )
        results["routes (with replica, after standby down)"] = routes(replica)
    finally:
        stack.standby.bouncer.start()
    return results


def report(results: dict, args: argparse.Namespace, command: str) -> str:
    rows = "".join(
        f"| {workload} | {name} | {r['rps']:,.0f} | {r['p50_ms']} | {r['p99_ms']} | {r['p999_ms']} | {r['errors'] + r['non2xx_or_404']} |\n"
        for workload, by_service in results.items() if not workload.startswith("routes")
        for name, r in by_service.items()
    )
    return (
        "# Read replica: overhead per request\n\n"
        f"Produced by `{command}`. Machine: {machine()}.\n\n"
        f"Open loop at {args.rate} req/s, {args.rounds} alternating rounds of {args.seconds} s per variant "
        "(medians over rounds); cache GETs 80 % hits over 100,000 entries; feature lookups of one key over "
        f"{args.feature_tables} tables x {args.feature_rows:,} rows. The standby runs on the same cores as "
        "the primary: this is the cost of routing, not the capacity a standby on its own server adds.\n\n"
        "| workload | service | req/s | p50 ms | p99 ms | p99.9 ms | errors |\n| --- | --- | --- | --- | --- | --- | --- |\n"
        f"{rows}\nWhere the replica service's reads went (`cachesvc_read_routes_total`, target:reason), "
        "which shows the runs measured what they claim:\n\n"
        f"```json\n{json.dumps({k: v for k, v in results.items() if k.startswith('routes')}, indent=2)}\n```\n\nRaw figures:\n\n```json\n{json.dumps(results, indent=2)}\n```\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-replica", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=300, help="open-loop requests per second")
    parser.add_argument("--seconds", type=int, default=10, help="length of each round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--feature-tables", type=int, default=10)
    parser.add_argument("--feature-rows", type=int, default=10_000)
    parser.add_argument("--out", type=Path, help="write a Markdown report here")
    args = parser.parse_args(argv)
    results = run(args)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    if args.out:
        command = "scripts/bench-replica " + " ".join(argv if argv is not None else sys.argv[1:])
        args.out.write_text(report(results, args, command.strip()))
        say(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
