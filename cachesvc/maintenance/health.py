"""Partition health: size, expiry, upkeep and coverage per partition, with warnings."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from psycopg import sql

from cachesvc.maintenance.partitions import AUDIT, CACHE, add_months, db_today, existing, month_start, partition_name
from cachesvc.maintenance.runner import Run

# Thresholds: a warning (and exit 3) when crossed.
MIN_MONTHS_AHEAD = 2
MAX_DEAD_RATIO = 0.2
MAX_EXPIRED_SHARE = 0.5
MAX_DAYS_WITHOUT_VACUUM = 7
MAX_HOURS_SINCE = {"partitions_ensure": 26, "cleanup": 2, "audit_archive": 26}


def health(run: Run, metrics_file: Path | None = None) -> None:
    q = run.conn.execute
    rows = q(
        "SELECT parent_table, partition_name, range_start, range_end, row_estimate, total_bytes, live_tuples,"
        " dead_tuples, dead_ratio, last_vacuum, last_analyze, is_default FROM partition_health_metrics"
        " ORDER BY parent_table, range_start NULLS FIRST"
    ).fetchall()
    now = q("SELECT now()").fetchone()[0]
    report = []
    for parent, name, start, end, estimate, size, live, dead, dead_ratio, vacuumed, analyzed, is_default in rows:
        item = {
            "table": parent, "partition": name, "from": start, "to": end, "rowEstimate": estimate,
            "bytes": size, "liveTuples": live, "deadTuples": dead, "deadRatio": float(dead_ratio or 0),
            "lastVacuum": vacuumed, "lastAnalyze": analyzed,
        }
        if is_default:
            run.problems.append(f"{name}: a DEFAULT partition exists")
        if parent == CACHE:
            expired = q(
                sql.SQL("SELECT count(*) FROM {} WHERE expires_at <= now()").format(sql.Identifier(name))
            ).fetchone()[0]
            total = max(estimate, live or 0, expired)
            item["expiredRows"] = expired
            item["expiredShare"] = round(expired / total, 4) if total else 0.0
            if total and item["expiredShare"] > MAX_EXPIRED_SHARE and (end is None or end > now):
                run.problems.append(f"{name}: {item['expiredShare']:.0%} of rows expired (> {MAX_EXPIRED_SHARE:.0%}); run cleanup")
        if item["deadRatio"] > MAX_DEAD_RATIO and (dead or 0) > 1000:
            run.problems.append(f"{name}: dead tuple ratio {item['deadRatio']:.0%} (> {MAX_DEAD_RATIO:.0%}); vacuum lagging")
        if (live or 0) > 0 and (vacuumed is None or now - vacuumed > dt.timedelta(days=MAX_DAYS_WITHOUT_VACUUM)) and (dead or 0) > 1000:
            run.problems.append(f"{name}: not vacuumed for {MAX_DAYS_WITHOUT_VACUUM} days with dead tuples")
        report.append(item)

    this_month = month_start(db_today(run))
    coverage = {}
    for parent in (CACHE, AUDIT):
        have = {p[0] for p in existing(run, parent)}
        ahead = 0
        while partition_name(parent, add_months(this_month, ahead + 1)) in have:
            ahead += 1
        if partition_name(parent, this_month) not in have:
            ahead = -1
        coverage[parent] = ahead
        if ahead < MIN_MONTHS_AHEAD:
            run.problems.append(f"{parent}: only {max(ahead, 0)} months of partitions ahead (want >= {MIN_MONTHS_AHEAD});"
                                " run `cachesvc partitions ensure`")

    last_runs = {}
    for action, max_hours in MAX_HOURS_SINCE.items():
        row = q(
            "SELECT max(occurred_at) FROM cache_audit_log WHERE action = %s AND details->>'status' = 'ok'"
            " AND NOT coalesce((details->>'dryRun')::boolean, false)",
            (f"maintenance.{action}",),
        ).fetchone()
        last_runs[action] = row[0]
        if row[0] is None or now - row[0] > dt.timedelta(hours=max_hours):
            run.problems.append(f"last successful {action.replace('_', ' ')} run: {row[0] or 'never'} (> {max_hours} h ago)")

    run.summary |= {"partitions": report, "monthsAhead": coverage, "lastSuccessfulRun": last_runs}
    if metrics_file is not None:
        defaults = {p: int(any(r[0] == p and r[11] for r in rows)) for p in (CACHE, AUDIT)}
        write_metrics(metrics_file, coverage, defaults, last_runs, len(run.problems))


def write_metrics(path: Path, coverage: dict, defaults: dict, last_runs: dict, problems: int) -> None:
    """Prometheus text format for node_exporter's textfile collector (written atomically)."""
    lines = [
        "# HELP cachesvc_partition_months_ahead Months of partitions that exist after the current one (-1: current missing).",
        "# TYPE cachesvc_partition_months_ahead gauge",
        *(f'cachesvc_partition_months_ahead{{table="{t}"}} {n}' for t, n in coverage.items()),
        "# HELP cachesvc_default_partition_present 1 when the table has a DEFAULT partition (it should not).",
        "# TYPE cachesvc_default_partition_present gauge",
        *(f'cachesvc_default_partition_present{{table="{t}"}} {v}' for t, v in defaults.items()),
        "# HELP cachesvc_maintenance_last_success_timestamp_seconds When each maintenance command last succeeded.",
        "# TYPE cachesvc_maintenance_last_success_timestamp_seconds gauge",
        *(f'cachesvc_maintenance_last_success_timestamp_seconds{{command="{c}"}} {ts.timestamp() if ts else 0}'
          for c, ts in last_runs.items()),
        "# HELP cachesvc_health_problems Problems the last partition health check found.",
        "# TYPE cachesvc_health_problems gauge",
        f"cachesvc_health_problems {problems}",
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
