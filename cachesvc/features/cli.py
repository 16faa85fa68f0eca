"""``cachesvc features …``: warmup, stats, load, demo.

JSON on stdout, progress on stderr (when it is a terminal); exit 0 ok, 1 failure, 2 usage.
``load``, ``demo`` and ``stats`` use the direct connection (CACHESVC_ADMIN_DATABASE_URL);
``warmup`` goes the service's way (CACHESVC_DATABASE_URL, through PgBouncer, as the
service's role), so that it warms exactly what the service will read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from pathlib import Path

import msgspec

from cachesvc.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

DEV_DEMO_TABLES, DEV_DEMO_ROWS = 5, 1000


def _print_json(obj) -> None:
    sys.stdout.write(json.dumps(msgspec.to_builtins(obj), indent=2, default=str) + "\n")


def _progress(msg: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"cachesvc: {msg}\n")


def _err(msg: str) -> None:
    sys.stderr.write(f"cachesvc: {msg}\n")


def cmd_warmup(args, settings: Settings) -> int:
    return asyncio.run(_warmup(settings))


async def _warmup(settings: Settings) -> int:
    from cachesvc import db
    from cachesvc.features import catalog, readiness, warmup
    from cachesvc.features.reader import FeatureReader

    pool = db.create_pool(settings)
    await db.open_pool(pool, settings)
    try:
        async with pool.connection() as conn:
            found = await catalog.discover(conn, settings.features_schema, catalog.parse_allow_list(settings.features_tables))
        reader = FeatureReader(pool, found, strategy=settings.features_strategy)
        samples = await warmup.sample_keys(reader)
        _progress(f"warming {len(found.tables)} tables")
        report = await warmup.warm_up(
            reader,
            prewarm_fraction=settings.features_prewarm_fraction,
            hot_key_limit=settings.features_warmup_hot_keys,
            lookups=settings.features_warmup_lookups,
            concurrency=settings.pool_size,
            samples=samples,
        )
        keys = samples.probe or samples.warm
        probe = await readiness.probe(reader, keys, settings, random.Random()) if keys else None
    finally:
        await pool.close()
    _print_json({"tables": list(found.tables), **report.as_dict(), "probe": probe.as_dict() if probe else None})
    return EXIT_OK


def cmd_stats(args, settings: Settings) -> int:
    import psycopg

    from cachesvc.features import stats

    with psycopg.connect(settings.admin_database_url, autocommit=True) as conn:
        report = stats.collect_sync(conn, settings.features_schema)
    _print_json(report)
    for warning in report.warnings:
        _err(f"warning: {warning}")
    return EXIT_FAILURE if args.strict and report.warnings else EXIT_OK


def cmd_load(args, settings: Settings) -> int:
    from cachesvc.features import load

    try:
        summary = load.load_csv(
            settings.admin_database_url, settings.features_schema, args.table, Path(args.file), progress=_progress
        )
    except load.LoadError as exc:
        _err(str(exc))
        return EXIT_USAGE
    if not summary["loaded"]:
        _err(f"{args.table}: {summary['reason']}; nothing done")
    _print_json(summary)
    return EXIT_OK


def cmd_demo(args, settings: Settings) -> int:
    from cachesvc.features import demo

    if args.tables < 1 or args.rows < 1:
        _err("--tables and --rows must be at least 1")
        return EXIT_USAGE
    _print_json(
        demo.generate(
            settings.admin_database_url,
            settings.features_schema,
            tables=args.tables,
            rows=args.rows,
            only_missing=args.only_missing,
            seed=args.seed,
            progress=_progress,
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
    c.set_defaults(func=cmd_load)

    c = f_sub.add_parser("demo", help="create (or replace) demo feature tables with realistic mixed-type rows")
    c.add_argument("--tables", type=int, default=30)
    c.add_argument("--rows", type=int, default=100_000)
    c.add_argument("--seed", type=int, default=42)
    c.add_argument("--only-missing", action="store_true", help="keep demo tables that already exist")
    c.set_defaults(func=cmd_demo)


# -- scripts/dev -------------------------------------------------------------------------------


def dev_demo(admin_url: str, settings: Settings, log) -> list[str]:
    """A small demo set for scripts/dev, created once and kept; returns the table names."""
    from cachesvc.features import demo

    result = demo.generate(
        admin_url, settings.features_schema, tables=DEV_DEMO_TABLES, rows=DEV_DEMO_ROWS, only_missing=True
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
