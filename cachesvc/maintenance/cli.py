"""`cachesvc` maintenance subcommands (for cron and systemd timers; see scripts/ and deploy/).

Each runs through the runner (``runner.command``): lock, retries, JSON summary, audit row.
Exit codes (``cachesvc.clikit``): 0 ok (also: another run already holds the lock), 1 failure,
2 usage error, 3 verification or health check found problems.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from cachesvc.maintenance import archive, cleanup, health, partitions, verify
from cachesvc.maintenance.runner import command


def _date(value: str) -> dt.date:
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {value!r}") from None


def register(sub) -> None:
    p = sub.add_parser("partitions", help="monthly partitions of the cache and the audit log")
    ps = p.add_subparsers(dest="partitions_command", required=True, metavar="SUBCOMMAND")
    c = ps.add_parser("ensure", help="create this month's partitions and N months ahead (gaps filled)")
    c.add_argument("--ahead", type=int, default=None, help="months ahead (default CACHESVC_PARTITIONS_AHEAD, 3)")
    c.add_argument("--dry-run", action="store_true")
    command(c, "partitions ensure", lambda a, s: lambda run: partitions.ensure(
        run, s.maintenance.partitions_ahead if a.ahead is None else a.ahead))
    c = ps.add_parser("retire", help="drop past cache months with no live row, and archived audit months")
    c.add_argument("--dry-run", action="store_true")
    command(c, "partitions retire", lambda a, s: partitions.retire)

    c = sub.add_parser("cleanup", help="delete expired cache rows in small committed batches")
    c.add_argument("--batch-size", type=int, default=5000)
    c.add_argument("--max-seconds", type=float, default=600, help="stop after this long (the next run goes on)")
    c.add_argument("--pause", type=float, default=0.05, help="seconds between batches")
    c.add_argument("--dry-run", action="store_true")
    command(c, "cleanup", lambda a, s: lambda run: cleanup.cleanup(run, a.batch_size, a.max_seconds, a.pause))

    p = sub.add_parser("audit", help="archive and restore audit-log months")
    aus = p.add_subparsers(dest="audit_command", required=True, metavar="SUBCOMMAND")
    c = aus.add_parser("archive", help="write whole months before DATE to DEST (JSON Lines + manifest), then drop them")
    c.add_argument("--before", type=_date, metavar="DATE",
                   help="archive whole months that ended by this date (default: keep CACHESVC_AUDIT_RETENTION_MONTHS)")
    c.add_argument("--dest", type=Path, metavar="DIR", help="default CACHESVC_ARCHIVE_DIR")
    c.add_argument("--dry-run", action="store_true")
    command(c, "audit archive", lambda a, s: lambda run: archive.archive(
        run, a.before or archive.retention_cutoff(run), a.dest or s.maintenance.archive_dir))
    c = aus.add_parser("restore", help="put an archived month back from its .jsonl.gz (checked against its manifest)")
    c.add_argument("file", type=Path)
    c.add_argument("--dry-run", action="store_true")
    command(c, "audit restore", lambda a, s: lambda run: archive.restore(run, a.file))

    c = sub.add_parser("verify", help="check the deployment: schema, RLS, privileges, partitions, views, functions")
    c.add_argument("--ahead", type=int, default=None, help="months of partitions required ahead (default CACHESVC_PARTITIONS_AHEAD)")
    command(c, "verify", lambda a, s: lambda run: verify.verify(run, s.maintenance.partitions_ahead if a.ahead is None else a.ahead))

    p = sub.add_parser("health", help="health reports")
    hs = p.add_subparsers(dest="health_command", required=True, metavar="SUBCOMMAND")
    c = hs.add_parser("partitions", help="per partition: rows, size, expired share, dead tuples, upkeep, coverage")
    c.add_argument("--metrics-file", type=Path, metavar="PATH",
                   help="also write Prometheus metrics there (for node_exporter's textfile collector)")
    command(c, "health partitions", lambda a, s: lambda run: health.health(run, a.metrics_file))
