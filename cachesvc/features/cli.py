"""``cachesvc features …``: warmup, stats, load, demo.

JSON on stdout, progress on stderr (when it is a terminal); exit codes of ``cachesvc.clikit``.
``load`` is a maintenance command (``maintenance.runner``: lock, retries, summary, audit row).
``load``, ``demo`` and ``stats`` use the direct connection (CACHESVC_ADMIN_DATABASE_URL);
``warmup`` goes the service's way (CACHESVC_DATABASE_URL, through PgBouncer, as the
service's role), so that it warms exactly what the service will read.
"""

from __future__ import annotations

import argparse
import asyncio
import random
from pathlib import Path

from cachesvc.clikit import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, error, print_json, progress
from cachesvc.maintenance import runner
from cachesvc.settings import Settings

DEV_DEMO_TABLES, DEV_DEMO_ROWS = 5, 1000


def cmd_warmup(args, settings: Settings) -> int:
    return asyncio.run(_warmup(settings))


async def _warmup(settings: Settings) -> int:
    from cachesvc.db.pools import create_pool, open_pool
    from cachesvc.features import catalog, readiness, warmup
    from cachesvc.features.reader import FeatureReader

    pool = create_pool(settings.database)
    await open_pool(pool, settings.database)
    try:
        async with pool.connection() as conn:
            found = await catalog.discover(conn, settings.features.schema, catalog.parse_allow_list(settings.features.tables))
        reader = FeatureReader(pool, found, strategy=settings.features.strategy)
        samples = await warmup.sample_keys(reader)
        progress(f"warming {len(found.tables)} tables")
        report = await warmup.warm_up_as_set(reader, settings.features, concurrency=settings.database.pool_size,
                                             samples=samples)
        keys = samples.probe or samples.warm
        probe = await readiness.probe(reader, keys, settings.features, random.Random()) if keys else None
    finally:
        await pool.close()
    print_json({"tables": list(found.tables), **report.as_dict(), "probe": probe.as_dict() if probe else None})
    return EXIT_OK


def cmd_stats(args, settings: Settings) -> int:
    import psycopg

    from cachesvc.features import stats

    with psycopg.connect(settings.database.admin_database_url, autocommit=True) as conn:
        report = stats.collect_sync(conn, settings.features.schema)
    print_json(report)
    for warning in report.warnings:
        error(f"warning: {warning}")
    return EXIT_FAILURE if args.strict and report.warnings else EXIT_OK


def cmd_demo(args, settings: Settings) -> int:
    from cachesvc.features import demo

    if args.tables < 1 or args.rows < 1:
        error("--tables and --rows must be at least 1")
        return EXIT_USAGE
    print_json(
        demo.generate(
            settings.database.admin_database_url,
            settings.features.schema,
            tables=args.tables,
            rows=args.rows,
            only_missing=args.only_missing,
            seed=args.seed,
            progress=progress,
        )
    )
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("features", help="feature tables: warm-up, health, loading, demo data")
    f_sub = p.add_subparsers(dest="features_command", required=True, metavar="SUBCOMMAND")

    c = f_sub.add_parser("warmup", help="warm the feature tables up now (as the service does before it is ready)")
    c.set_defaults(func=cmd_warmup)

    c = f_sub.add_parser("stats", help="per table: buffer hit ratio, index vs sequential scans, rows, size, warnings")
    c.add_argument("--strict", action="store_true", help="exit 1 when there is a warning")
    c.set_defaults(func=cmd_stats)

    c = f_sub.add_parser("load", help="replace a feature table's rows with a CSV file (header row names the columns)")
    c.add_argument("table", help="an existing table of the feature schema")
    c.add_argument("file", help="CSV with a header row")
    runner.command(c, "features load", _load)

    c = f_sub.add_parser("demo", help="create (or replace) demo feature tables with realistic mixed-type rows")
    c.add_argument("--tables", type=int, default=30)
    c.add_argument("--rows", type=int, default=100_000)
    c.add_argument("--seed", type=int, default=42)
    c.add_argument("--only-missing", action="store_true", help="keep demo tables that already exist")
    c.set_defaults(func=cmd_demo)


def _load(args, settings: Settings):
    from cachesvc.features import load

    return lambda run: load.load(run, settings.features.schema, args.table, Path(args.file))


# -- scripts/dev -------------------------------------------------------------------------------


def dev_demo(admin_url: str, schema: str, log) -> list[str]:
    """A small demo set for scripts/dev, created once and kept; returns the table names."""
    from cachesvc.features import demo

    result = demo.generate(
        admin_url, schema, tables=DEV_DEMO_TABLES, rows=DEV_DEMO_ROWS, only_missing=True
    )
    if result["created"]:
        log(f"created demo feature tables: {', '.join(result['created'])}")
    return result["created"] + result["kept"]


def dev_banner(url: str, service_token: str, tables: list[str]) -> str:
    some = ",".join(tables[:2])
    return (
        f"  features         curl -H \"Authorization: Bearer {service_token}\" \\\n"
        f"                        '{url}/v1/features/42?tables={some}'\n"
        f"                   ({len(tables)} demo tables of {DEV_DEMO_ROWS} rows, keys 1..{DEV_DEMO_ROWS}; "
        "cachesvc features stats)\n\n"
    )
