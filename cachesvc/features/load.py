"""Loading a feature table: COPY into a staging table, then swap it in, in one short transaction.

Readers never see a half-loaded table: the new rows go into ``_load_<table>`` (same columns,
defaults, constraints and indexes), which is vacuumed and analyzed, and only then replaces
the table in one transaction that holds the table's lock for milliseconds: drop the old
table, rename the staging table and its indexes. A lookup waiting on that lock resolves
the table name again once it is granted, so it reads the new table whole; one that got
there first reads the old one whole. Everything runs as cache_maintainer (whose default
privileges let the service read the new table) on a direct connection, never through
PgBouncer. It runs as a maintenance command (``maintenance.runner``: retries, JSON summary,
audit row), under the ``features`` lock of its one table: a second load of the same table at
the same time exits saying so, loads of two tables go on side by side.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import psycopg
from psycopg import errors, sql

from cachesvc.features import catalog as feature_catalog
from cachesvc.maintenance.runner import FEATURES_LOCK, Run, UsageError
from cachesvc.maintenance.runner import lock_key as runner_lock_key

STAGING_PREFIX = "_load_"
COPY_CHUNK = 1 << 20
SWAP_ATTEMPTS = 5


class LoadError(UsageError):
    """The input or the target table is not loadable; the message says why (usage error)."""


def staging_name(table: str) -> str:
    return (STAGING_PREFIX + table)[:63]


def lock_key(schema: str, table: str) -> str:
    """The advisory lock a load of ``schema.table`` holds for its whole run."""
    return runner_lock_key(FEATURES_LOCK, f"{schema}.{table}")


def try_lock(conn: psycopg.Connection, schema: str, table: str) -> bool:
    """The load lock of one table, for whatever else replaces it (``demo``); released when the connection closes."""
    return conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key(schema, table),)
    ).fetchone()[0]


def read_header(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise LoadError(f"{path}: empty file; a CSV header naming the columns is expected")
    return [name.strip() for name in header]


def check_columns(table: feature_catalog.FeatureTable, header: list[str]) -> None:
    known = {c.name for c in table.columns}
    unknown = [c for c in header if c not in known]
    if unknown:
        raise LoadError(f"columns not in {table.name}: {', '.join(unknown)} (it has {', '.join(sorted(known))})")
    if len(set(header)) != len(header):
        raise LoadError("the CSV header names a column twice")
    if table.key not in header:
        raise LoadError(f"the CSV header must include the key column {table.key}")


def target(conn: psycopg.Connection, schema: str, table: str) -> feature_catalog.FeatureTable:
    """The existing feature table (its columns and key), owned by cache_maintainer."""
    if not conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{_q(schema)}.{_q(table)}",)).fetchone()[0]:
        raise LoadError(
            f"{schema}.{table} does not exist; create it first (after SET ROLE cache_maintainer),"
            " with its entity key as a single-column primary key"
        )
    owner = conn.execute(
        "SELECT relowner::regrole::text FROM pg_class WHERE oid = %s::regclass", (f"{_q(schema)}.{_q(table)}",)
    ).fetchone()[0]
    if owner != "cache_maintainer":
        raise LoadError(
            f"{schema}.{table} is owned by {owner}; loads replace tables as cache_maintainer: "
            f"ALTER TABLE {schema}.{table} OWNER TO cache_maintainer"
        )
    try:
        found = feature_catalog.discover_sync(conn, schema, [table])
    except feature_catalog.CatalogError as exc:
        raise LoadError(str(exc).removeprefix("cannot serve the feature tables: ")) from None
    return found.tables[table]


def create_staging(conn: psycopg.Connection, schema: str, table: str) -> sql.Composed:
    staging = sql.Identifier(schema, staging_name(table))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))  # left by a killed run
    conn.execute(sql.SQL("CREATE TABLE {} (LIKE {} INCLUDING ALL)").format(staging, sql.Identifier(schema, table)))
    return staging


def copy_csv(conn: psycopg.Connection, staging: sql.Composed, columns: list[str], path: Path) -> int:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv, HEADER true)").format(
        staging, sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    with conn.cursor() as cur:
        with cur.copy(stmt) as copy, path.open("rb") as fh:
            while chunk := fh.read(COPY_CHUNK):
                copy.write(chunk)
        return cur.rowcount


def swap_in(conn: psycopg.Connection, schema: str, table: str, audit: dict | None = None) -> None:
    """Replace ``table`` (if it exists) by its staging table, in one short transaction.

    ``audit``: an audit row to write in that transaction, for callers outside the maintenance
    runner (``demo``); ``features load`` leaves its row to the runner."""
    staging = staging_name(table)
    conn.execute("SELECT create_monthly_audit_partition((now() AT TIME ZONE 'UTC')::date)")
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        try:
            with conn.transaction():
                conn.execute("SET LOCAL lock_timeout = '5s'")
                exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{_q(schema)}.{_q(table)}",)).fetchone()[0]
                if exists:
                    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, table)))
                conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(sql.Identifier(schema, staging), sql.Identifier(table)))
                for (index,) in conn.execute(
                    "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE i.indrelid = %s::regclass AND c.relname LIKE %s",
                    (f"{_q(schema)}.{_q(table)}", staging.replace("_", r"\_") + "%"),
                ).fetchall():
                    conn.execute(
                        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                            sql.Identifier(schema, index), sql.Identifier((table + index[len(staging):])[:63])
                        )
                    )
                conn.execute(sql.SQL("GRANT SELECT ON {} TO cache_app").format(sql.Identifier(schema, table)))
                if audit is not None:
                    conn.execute(
                        "INSERT INTO public.cache_audit_log (actor, action, details) VALUES (%s, %s, %s::jsonb)",
                        ("cachesvc features", "maintenance.features_load", json.dumps(audit)),
                    )
            return
        except errors.LockNotAvailable:
            if attempt == SWAP_ATTEMPTS:
                raise
            time.sleep(0.2 * attempt)


def drop_staging(admin_url: str, schema: str, table: str) -> None:
    """Best effort after a failed load (the next load drops a leftover anyway)."""
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute("SET ROLE cache_maintainer")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, staging_name(table))))
    except psycopg.Error:
        pass


def _q(name: str) -> str:
    return feature_catalog.quote(name)


def load(run: Run, schema: str, table: str, path: Path) -> None:
    """Load ``path`` (CSV with a header) into ``schema.table``: the body of ``features load``."""
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    header = read_header(path)
    conn = run.conn
    conn.execute("SET ROLE cache_maintainer")
    conn.execute("SET statement_timeout = 0")  # a large COPY takes as long as it takes; it locks only its staging table
    run.lock(FEATURES_LOCK, f"{schema}.{table}",
             busy={"table": table, "loaded": False, "reason": "another load of this table is running"})
    feature_table = target(conn, schema, table)
    check_columns(feature_table, header)
    run.progress(f"copying {path} into {schema}.{staging_name(table)}")
    try:
        with conn.transaction():
            staging = create_staging(conn, schema, table)
            rows = copy_csv(conn, staging, header, path)
        run.progress(f"{rows} rows copied; vacuum and analyze")
        conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(staging))
        run.progress(f"swapping {schema}.{table}")
        swap_in(conn, schema, table)
    except BaseException:
        drop_staging(run.settings.database.admin_database_url, schema, table)
        raise
    run.summary |= {"table": table, "schema": schema, "rows": rows, "file": path.name, "bytes": path.stat().st_size,
                    "loaded": True}
