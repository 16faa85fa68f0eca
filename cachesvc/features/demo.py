"""A realistic demo data set: N feature tables of M rows, keyed by the same entity ids 1..M.

Each table mixes the types a feature store holds: integers, bigints, doubles, reals,
numerics, booleans, text, timestamps, and nullable columns with a share of NULLs. Rows are
generated inside PostgreSQL (seeded, so a run is repeatable) into a staging table that is
swapped in like a load, so the demo can be refreshed under a running service.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import psycopg
from psycopg import sql

from cachesvc.features import load

THEMES = [
    "engagement", "purchases", "sessions", "content_affinity", "device_usage",
    "notifications", "search_activity", "social_graph", "risk", "subscription",
]
WINDOWS = ["1d", "7d", "30d"]

# name, type, expression over random() (NULLs where a column is nullable)
COLUMNS = [
    ("score", "double precision", "random()"),
    ("events", "integer", "(random() * 500)::int"),
    ("revenue_usd", "numeric(12,2)", "CASE WHEN random() < 0.2 THEN NULL ELSE round((random() * 500)::numeric, 2) END"),
    ("is_active", "boolean", "random() < 0.7"),
    ("segment", "text", "(ARRAY['new','casual','regular','power','dormant'])[1 + floor(random() * 5)::int]"),
    ("last_seen_at", "timestamptz", "CASE WHEN random() < 0.05 THEN NULL ELSE now() - random() * interval '90 days' END"),
    ("avg_session_s", "real", "(random() * 1800)::real"),
    ("lifetime_value", "bigint", "(random() * 1e9)::bigint"),
    ("churn_risk", "double precision", "CASE WHEN random() < 0.15 THEN NULL ELSE random() END"),
    ("country", "text", "(ARRAY['US','GB','DE','FR','BR','IN','JP','CA'])[1 + floor(random() * 8)::int]"),
    ("is_subscriber", "boolean", "CASE WHEN random() < 0.1 THEN NULL ELSE random() < 0.3 END"),
    ("top_category", "text", "CASE WHEN random() < 0.1 THEN NULL ELSE 'category_' || floor(random() * 40)::int END"),
    ("first_seen_at", "timestamptz", "now() - interval '90 days' - random() * interval '900 days'"),
    ("sessions", "integer", "floor(random() * 60)::int"),
]
COLUMNS_PER_TABLE = 9


def table_names(count: int) -> list[str]:
    names = [f"{theme}_{window}" for window in WINDOWS for theme in THEMES]
    return [names[i] if i < len(names) else f"{names[i % len(names)]}_{i // len(names)}" for i in range(count)]


def columns_for(index: int) -> list[tuple[str, str, str]]:
    """A different window of COLUMNS per table, so tables differ in shape."""
    return [COLUMNS[(index + j) % len(COLUMNS)] for j in range(COLUMNS_PER_TABLE)]


def create_table(conn: psycopg.Connection, schema: str, name: str, index: int, rows: int, seed: float) -> None:
    """Fill ``_load_<name>`` with ``rows`` rows (keys 1..rows), then swap it in as ``name``."""
    staging = sql.Identifier(schema, load.staging_name(name))
    columns = columns_for(index)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(staging))
    with conn.transaction():
        conn.execute(
            sql.SQL("CREATE TABLE {} (entity_key bigint PRIMARY KEY, {}, updated_at timestamptz NOT NULL DEFAULT now())").format(
                staging, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t, _ in columns)
            )
        )
        conn.execute("SELECT setseed(%s)", (seed,))
        conn.execute(
            sql.SQL("INSERT INTO {} (entity_key, {}) SELECT g, {} FROM generate_series(1, %s) AS g").format(
                staging,
                sql.SQL(", ").join(sql.Identifier(c) for c, _, _ in columns),
                sql.SQL(", ").join(sql.SQL(e) for _, _, e in columns),
            ),
            (rows,),
        )
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(staging))
    load.swap_in(conn, schema, name, {"table": name, "schema": schema, "rows": rows, "demo": True})


def generate(
    admin_url: str,
    schema: str,
    *,
    tables: int,
    rows: int,
    only_missing: bool = False,
    seed: int = 42,
    progress: Callable[[str], None] = lambda m: None,
) -> dict:
    began = time.perf_counter()
    created, kept = [], []
    with psycopg.connect(admin_url, autocommit=True, application_name="cachesvc features demo") as conn:
        conn.execute("SET ROLE cache_maintainer")
        for index, name in enumerate(table_names(tables)):
            exists = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}"."{name}"',)).fetchone()[0]
            if only_missing and exists:
                kept.append(name)
                continue
            if not load.try_lock(conn, schema, name):
                kept.append(name)
                continue
            progress(f"{schema}.{name}: {rows} rows")
            try:
                create_table(conn, schema, name, index, rows, ((seed + index) % 1000) / 1000)
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (load.lock_key(schema, name),))
            created.append(name)
    return {
        "schema": schema, "rows": rows, "created": created, "kept": kept,
        "seconds": round(time.perf_counter() - began, 3),
    }
