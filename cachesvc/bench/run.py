"""`cachesvc bench`: the service against the database's own ceiling, side by side, in one run.

``scripts/bench`` runs this command: its options, the table it prints, and BENCHMARKS.md,
which it writes with the machine's description. What is measured, and how, is ``measure.py``;
each open loop has a target (the scheduled rate kept, without errors), and the table says
whether it was met.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from pathlib import Path

from cachesvc.bench import loadgen
from cachesvc.bench.measure import CONTENT, KEYS_PER_USER, USERS, measure
from cachesvc.bench.report import machine, say
from cachesvc.migrations import PROJECT_ROOT


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

    results = measure(seconds=args.seconds, clients=args.clients, rates=[int(r) for r in args.rates.split(",")],
                      scale=args.scale, feature_tables=args.feature_tables, feature_rows=args.feature_rows)
    rows: list[tuple[str, str, str, str]] = []  # measurement, throughput, latency, target (+ CPU, below)
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
    cpu_cells = {label: cpu_cell(results, label) for label, *_ in rows}
    table = ("| measurement | throughput | latency | target | server CPU per request: service / PgBouncer / PostgreSQL |\n"
             "| --- | --- | --- | --- | --- |\n"
             + "".join(f"| {a} | {b} | {c} | {d} | {cpu_cells[a]} |\n" for a, b, c, d in rows))
    missed = [name for name, value in results.items() if value.get("target_met") is False]
    verdict = (f"Targets: every open loop kept at least {loadgen.RATE_KEPT:.0%} of its scheduled rate without errors."
               if not missed else f"Targets missed: {'; '.join(missed)}.")
    say(verdict)
    sys.stdout.write(table)
    sys.stdout.write(json.dumps(results, indent=2) + "\n")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kept = kept_sections(args.out)
    args.out.write_text(
        f"# Benchmarks\n\nProduced by `scripts/bench` (`cachesvc bench {' '.join(argv or sys.argv[1:])}`) on {when}.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Data: {USERS:,} users x {KEYS_PER_USER} entries = {USERS * KEYS_PER_USER:,} rows, ~{len(CONTENT)} B of JSON each; "
        f"GET mix 80 % hits / 20 % misses over all users; PostgreSQL with fsync on. "
        f"Closed loops: {args.clients} connections for {args.seconds} s; open loops: {args.seconds} s at the fixed rate, "
        f"latency from each request's scheduled send time; an open loop's target is at least "
        f"{loadgen.RATE_KEPT:.0%} of its rate, answered without errors.\n\n{table}\n{verdict}\n\n"
        f"Raw figures:\n\n```json\n{json.dumps(results, indent=2)}\n```\n" + kept
    )
    say(f"wrote {args.out}")
    return 0


LABEL_KEYS = {  # table label prefix -> results key whose CPU it shows
    "service GET, closed loop": "get_closed", "service PUT, closed loop": "put_closed",
    "service PUT, open loop at 300": "put_open_300",
}


def cpu_cell(results: dict, label: str) -> str:
    """``service / PgBouncer / PostgreSQL`` CPU ms per request of the run behind ``label``."""
    key = next((k for prefix, k in LABEL_KEYS.items() if label.startswith(prefix)), None)
    if key is None and label.startswith("service GET, open loop at "):
        rate, _, rest = label.removeprefix("service GET, open loop at ").partition(" req/s")
        key = f"get_open_{rate}" + ("_10m" if "10M" in rest else "")
    elif key is None and label.startswith("feature lookup"):
        key = "features_1key_200" if ", 1 key(s)" in label else "features_10key_200"
    split = results.get(key, {}).get("cpu_ms_per_request") if key else None
    if not split:
        return ""
    return " / ".join(f"{split[name]:.3f}" for name in ("service", "pgbouncer", "postgres")) + " ms"


KEPT = re.compile(r"^<!-- (\w+): .*?^<!-- /\1 -->\n", re.M | re.S)


def kept_sections(path: Path) -> str:
    """Sections other benchmarks own in the same file (``<!-- name: … -->`` to ``<!-- /name -->``),
    kept as they are when this one rewrites its part."""
    if not path.exists():
        return ""
    return "".join("\n" + m.group(0) for m in KEPT.finditer(path.read_text()))


def target_cell(summary: dict) -> str:
    """An open loop's target and whether it was met, for the table."""
    return f"≥ {summary['target_rps']:,.0f} req/s: {'met' if summary['target_met'] else 'missed'}"


if __name__ == "__main__":
    raise SystemExit(main())
