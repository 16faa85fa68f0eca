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
import statistics
import sys
from pathlib import Path

from cachesvc.bench import loadgen, restart
from cachesvc.bench.measure import CONTENT, HOT_KEYS, KEYS_PER_USER, L1_MAX_AGE_MS, USERS, measure
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
    parser.add_argument("--runs", type=int, default=1,
                        help="whole runs, each on a stack of its own; the table shows the median of each figure")
    args = parser.parse_args(argv)

    runs = []
    for n in range(1, args.runs + 1):
        if args.runs > 1:
            say(f"run {n} of {args.runs}")
        run = measure(seconds=args.seconds, clients=args.clients, rates=[int(r) for r in args.rates.split(",")],
                      scale=args.scale, feature_tables=args.feature_tables, feature_rows=args.feature_rows)
        run["service_vs_ceiling"] = ratios(run)  # side by side within the run, then the median of the ratios
        runs.append(run)
        say(f"run {n}: {json.dumps(run)}")  # kept in the log, whatever happens to the report
    results = median_of(runs)
    table = report_table(results, args.feature_tables, args.feature_rows)
    verdict = verdict_line(results)
    say(verdict)
    sys.stdout.write(table)
    raw = results | ({"runs": runs} if len(runs) > 1 else {})
    sys.stdout.write(json.dumps(raw, indent=2) + "\n")
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    kept = kept_sections(args.out)
    args.out.write_text(
        f"# Benchmarks\n\nProduced by `scripts/bench` (`cachesvc bench {' '.join(argv or sys.argv[1:])}`) on {when}.\n\n"
        f"Machine: {machine()}.\n\n"
        f"Data: {USERS:,} users x {KEYS_PER_USER} entries = {USERS * KEYS_PER_USER:,} rows, ~{len(CONTENT)} B of JSON each; "
        f"GET mix 80 % hits / 20 % misses over all users; PostgreSQL with fsync on. "
        f"Closed loops: {args.clients} connections for {args.seconds} s; open loops: {args.seconds} s at the fixed rate, "
        f"latency from each request's scheduled send time; an open loop's target is at least "
        f"{loadgen.RATE_KEPT:.0%} of its rate, answered without errors. {features_note(args)}{runs_note(len(runs))}"
        f"\n\n{table}\n{verdict}\n\n"
        f"Raw figures:\n\n```json\n{json.dumps(raw, indent=2)}\n```\n" + kept
    )
    say(f"wrote {args.out}")
    return 0


def median_of(runs: list[dict]) -> dict:
    """One result of several runs of the same measurements: the median of each number, the
    majority of each yes/no (a target met in 2 runs of 3 is met), the first run's other values.
    Each run's own figures stay in the JSON (``runs``)."""
    first = runs[0]
    if len(runs) == 1:
        return first
    out: dict = {}
    for key, value in first.items():
        values = [run[key] for run in runs if key in run]
        if isinstance(value, dict):
            out[key] = median_of([v for v in values if isinstance(v, dict)])
        elif isinstance(value, bool):
            out[key] = sum(bool(v) for v in values) * 2 > len(values)
        elif isinstance(value, (int, float)):
            out[key] = round(statistics.median(values), 3)
        else:
            out[key] = value
    return out


def ratios(results: dict) -> dict[str, float]:
    """Closed-loop service throughput over its ceiling's, for GET and (when run) feature lookups."""
    pairs = {"get": ("get_closed", "ceiling"), "features_1key": ("features_closed", "features_ceiling"),
             "features_1key_l1_hot": ("features_l1_closed", "features_ceiling")}
    return {name: round(results[service]["rps"] / results[ceiling]["tps"], 3)
            for name, (service, ceiling) in pairs.items() if service in results and ceiling in results}


def verdict_line(results: dict) -> str:
    """Whether every target was met, naming those missed."""
    missed = [name for name, value in results.items() if isinstance(value, dict) and value.get("target_met") is False]
    if missed:
        return f"Targets missed: {'; '.join(missed)}."
    line = f"Targets: every open loop kept at least {loadgen.RATE_KEPT:.0%} of its scheduled rate without errors"
    if any(name.startswith("features_after_restart_") for name in results):
        line += f"; the first feature request after a PostgreSQL restart took at most {restart.TARGET_X:g} x the warm p50"
    return line + "."


def report_table(results: dict, feature_tables: int, feature_rows: int) -> str:
    """The markdown table of ``results``: a row per run, with the server CPU per request."""
    rows: list[tuple[str, str, str, str, str]] = []  # measurement, throughput, latency, target, results key
    ceiling = results["ceiling"]["tps"]
    get_rps = results["get_closed"]["rps"]
    rows.append(("ceiling: pgbench, the service's GET transaction through PgBouncer",
                 f"{ceiling:,.0f} tx/s", f"avg {results['ceiling']['latency_avg_ms']} ms", "", "ceiling"))
    ratio = results.get("service_vs_ceiling", {})  # the median of each run's own ratio, when there are runs

    def against(name: str, rps: float, tps: float) -> str:
        return f"{rps:,.0f} req/s ({ratio.get(name, rps / tps):.2f} x ceiling)"

    rows.append(("service GET, closed loop", against("get", get_rps, ceiling),
                 f"p50 {results['get_closed']['p50_ms']} ms, p99 {results['get_closed']['p99_ms']} ms", "", "get_closed"))
    for key, value in results.items():
        if key.startswith("get_open_"):
            label = key.removeprefix("get_open_").replace("_10m", " req/s, 10M rows")
            label = label if "rows" in label else label + " req/s, 100k rows"
            rows.append((f"service GET, open loop at {label}", f"{value['rps']:,.0f} req/s",
                         f"p50 {value['p50_ms']} ms, p99 {value['p99_ms']} ms, p99.9 {value['p999_ms']} ms", target_cell(value), key))
    data = f"{feature_tables} tables x {feature_rows:,} rows"
    for n_keys in (1, 10):
        value = results.get(f"features_{n_keys}key_200")
        if value:
            rows.append((f"feature lookup, {data}, {n_keys} key(s), open loop at 200 req/s",
                         f"{value['rps']:,.0f} req/s", f"p50 {value['p50_ms']} ms, p99 {value['p99_ms']} ms, p99.9 {value['p999_ms']} ms",
                         target_cell(value), f"features_{n_keys}key_200"))
    feature_ceiling, feature_closed = results.get("features_ceiling"), results.get("features_closed")
    if feature_ceiling and feature_closed:
        tps, rps = feature_ceiling["tps"], feature_closed["rps"]
        rows.append((f"feature ceiling: pgbench, the service's transaction for 1 key x {feature_tables} tables through PgBouncer",
                     f"{tps:,.0f} tx/s", f"avg {feature_ceiling['latency_avg_ms']} ms", "", "features_ceiling"))
        rows.append((f"feature lookup, {data}, 1 key, `?tables=` all {feature_tables}, closed loop",
                     against("features_1key", rps, tps),
                     f"p50 {feature_closed['p50_ms']} ms, p99 {feature_closed['p99_ms']} ms", "", "features_closed"))
    hot = f"{HOT_KEYS:,} hot keys"
    l1 = f"L1 on (max age {L1_MAX_AGE_MS / 1000:g} s)"
    for key, label in (("features_hot_10key_200", f"feature lookup, 10 of {hot}, open loop at 200 req/s, L1 off"),
                       ("features_l1_10key_200", f"feature lookup, 10 of {hot}, open loop at 200 req/s, {l1}"),
                       ("features_l1_1key_200", f"feature lookup, 1 of {hot}, open loop at 200 req/s, {l1}")):
        value = results.get(key)
        if value:
            answered = f"; {value['l1_hit_ratio']:.0%} of keys from memory" if value.get("l1_hit_ratio") is not None else ""
            rows.append((label + answered, f"{value['rps']:,.0f} req/s",
                         f"p50 {value['p50_ms']} ms, p99 {value['p99_ms']} ms, p99.9 {value['p999_ms']} ms", target_cell(value), key))
    l1_closed = results.get("features_l1_closed")
    if l1_closed and feature_ceiling:
        rps, tps = l1_closed["rps"], feature_ceiling["tps"]
        answered = f"; {l1_closed['l1_hit_ratio']:.0%} of keys from memory" if l1_closed.get("l1_hit_ratio") is not None else ""
        rows.append((f"feature lookup, 1 of {hot}, `?tables=` all {feature_tables}, closed loop, {l1}{answered}",
                     against("features_1key_l1_hot", rps, tps),
                     f"p50 {l1_closed['p50_ms']} ms, p99 {l1_closed['p99_ms']} ms", "", "features_l1_closed"))
    for case, how in (("kept", "service kept running, at once"),
                      ("kept_rewarmed", "service kept running, once it warmed up again"),
                      ("started", "service started after it")):
        value = results.get(f"features_after_restart_{case}")
        if value:
            latency = (f"{value['first_ms']:.1f} ms = {value['x_warm_p50']:.2f} x warm p50 ({value['warm_p50_ms']:.2f} ms)"
                       if "first_ms" in value else value["error"].replace("\n", " ").replace("|", "\\|"))
            if value.get("first_status", 200) != 200:
                latency += f", answered {value['first_status']}"
            if value.get("errors"):
                latency += f"; {value['errors']} of the first {restart.AFTER_REQUESTS + 1} requests failed"
            ready = f", ready {value['ready_after_s']:.1f} s after start" if "ready_after_s" in value else ""
            ready += f" ({value['rewarmed_after_s']:.1f} s after the restart)" if "rewarmed_after_s" in value else ""
            rows.append((f"feature lookup, 1 key x {feature_tables} tables, first request after a PostgreSQL restart, {how}{ready}",
                         "", latency, f"≤ {value['target_x']:g} x warm p50: {'met' if value['target_met'] else 'missed'}", ""))
    put = results["put_closed"]
    rows.append(("service PUT, closed loop", f"{put['rps']:,.0f} req/s", f"p50 {put['p50_ms']} ms, p99 {put['p99_ms']} ms", "",
                 "put_closed"))
    p300 = results["put_open_300"]
    rows.append(("service PUT, open loop at 300 req/s", f"{p300['rps']:,.0f} req/s",
                 f"p50 {p300['p50_ms']} ms, p99 {p300['p99_ms']} ms, p99.9 {p300['p999_ms']} ms", target_cell(p300), "put_open_300"))
    return ("| measurement | throughput | latency | target | server CPU per request: service / PgBouncer / PostgreSQL |\n"
            "| --- | --- | --- | --- | --- |\n"
            + "".join(f"| {a} | {b} | {c} | {d} | {cpu_cell(results, key)} |\n" for a, b, c, d, key in rows))


def cpu_cell(results: dict, key: str) -> str:
    """``service / PgBouncer / PostgreSQL`` CPU ms per request of the run ``results[key]``
    (a ceiling has no service: "–")."""
    split = results.get(key, {}).get("cpu_ms_per_request") if key else None
    if not split:
        return ""
    return " / ".join("–" if split.get(name) is None else f"{split[name]:.3f}" for name in ("service", "pgbouncer", "postgres")) + " ms"


def runs_note(count: int) -> str:
    if count == 1:
        return ""
    return (f" Figures are the median of {count} whole runs, each on a stack of its own (a ratio is taken within each "
            f"run, side by side, then its median; a target is met when it was in most runs); each run's own figures "
            f"are in the JSON (`runs`).")


def features_note(args) -> str:
    """What the feature rows measure, for the file's data paragraph."""
    if not args.feature_tables:
        return ""
    return (f"Feature rows: the demo set (`cachesvc features demo --tables {args.feature_tables} --rows {args.feature_rows}`), "
            f"keys at random; the feature closed loop is `GET /v1/features/{{key}}?tables=<all {args.feature_tables}>` "
            f"at the GET closed loop's concurrency, and its ceiling pgbench running the transaction the service sends for "
            f"it (generated from the reader's statement and the runner's query string, `cachesvc/bench/ceiling.py`); "
            f"after a restart, a request is timed alone on an open connection, against the warm p50 of the same requests "
            f"(`cachesvc/bench/restart.py`).")


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
