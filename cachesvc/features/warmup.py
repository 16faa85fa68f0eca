"""Warm-up of the feature tables, so that the first request after a restart is as fast as the rest.

Three steps, in order:

1. **prewarm**: with the pg_prewarm extension, the primary key index of every table into
   shared buffers, then whole tables, smallest first, while they fit in
   ``features_prewarm_fraction`` of shared_buffers; the tables that do not fit are only
   prefetched into the OS page cache. Without the extension (or without the privilege to
   use it), an index-only scan reads every page of each key index, and an index scan reads
   the tables that fit.
2. **hot keys**: the keys that traffic asked for most (``feature_hot_keys``, kept across
   restarts) are looked up, in batches.
3. **synthetic lookups**: keys sampled from each key column's statistics (the histogram
   bounds ANALYZE keeps, so sampling reads no table) are looked up from every pooled
   connection at once, which also warms each server connection's catalog caches.

Every statement goes through the service's pool and PgBouncer, as the service's role.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg import errors, sql
from psycopg_pool import AsyncConnectionPool

from cachesvc.features import hotkeys
from cachesvc.features.catalog import FeatureTable
from cachesvc.features.reader import MAX_KEYS, FeatureReader
from cachesvc.settings import FeatureSettings

log = logging.getLogger("cachesvc.features")

STEP_TIMEOUT = "120s"  # statement_timeout of one warm-up statement (a whole table's pages)
SAMPLE_PER_TABLE = 100

PREWARM_SCHEMA = """
SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pg_prewarm' AND has_schema_privilege(n.oid, 'USAGE')
"""
SIZES = """
SELECT c.relname::text, quote_ident(n.nspname) || '.' || quote_ident(ic.relname), pg_relation_size(i.indexrelid), pg_relation_size(t.rel),
       pg_size_bytes(current_setting('shared_buffers'))
  FROM unnest(%s::regclass[]) WITH ORDINALITY AS t(rel, ord)
  JOIN pg_class c ON c.oid = t.rel
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_index i ON i.indrelid = t.rel AND i.indisprimary
  JOIN pg_class ic ON ic.oid = i.indexrelid
 ORDER BY t.ord
"""
# When the server (re)started: a restart empties shared buffers and ends every backend.
SERVER_STARTED_AT = "SELECT pg_postmaster_start_time()"
HISTOGRAM = """
SELECT tablename::text, attname::text, histogram_bounds::text::text[]
  FROM pg_stats
 WHERE schemaname = %s AND tablename = ANY(%s) AND attname = ANY(%s)
"""


@dataclass
class Samples:
    """Keys to look up: ``warm`` for warm-up itself, ``probe`` kept aside for readiness probes."""

    warm: list[str] = field(default_factory=list)
    probe: list[str] = field(default_factory=list)


async def _statement(pool: AsyncConnectionPool, query, params=None) -> list[tuple]:
    """One warm-up statement in its own transaction, with a longer statement timeout."""
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute("SELECT set_config('statement_timeout', %s, true)", (STEP_TIMEOUT,))
            cur = await conn.execute(query, params)
            return await cur.fetchall() if cur.description else []


async def _bounded(coros, limit: int) -> list:
    gate = asyncio.Semaphore(limit)

    async def run(coro):
        async with gate:
            return await coro

    return await asyncio.gather(*(run(c) for c in coros))


async def read_server_start(pool: AsyncConnectionPool) -> dt.datetime:
    """When the server behind ``pool`` last started (through PgBouncer: the server it connects to)."""
    return (await _statement(pool, SERVER_STARTED_AT))[0][0]


# -- 1. prewarm ------------------------------------------------------------------------------


async def prewarm(reader: FeatureReader, fraction: float, concurrency: int = 2) -> dict:
    pool, catalog = reader.pool, reader.catalog
    if not catalog.tables:
        return {"method": "none"}
    sizes = await _statement(pool, SIZES, (catalog.relation_names(),))
    shared_buffers = sizes[0][4]
    indexes = [(index, index_bytes) for _, index, index_bytes, _, _ in sizes]
    budget = int(shared_buffers * fraction) - sum(b for _, b in indexes)
    fits, rest = [], []
    for name, heap_bytes in sorted(((name, heap) for name, _, _, heap, _ in sizes), key=lambda r: r[1]):
        if heap_bytes <= budget:
            fits.append(catalog.tables[name])
            budget -= heap_bytes
        else:
            rest.append(catalog.tables[name])
    summary = {
        "sharedBuffersBytes": shared_buffers,
        "indexBytes": sum(b for _, b in indexes),
        "tablesInBuffers": len(fits),
        "tablesNotFitting": len(rest),
    }
    schema = await _statement(pool, PREWARM_SCHEMA)
    if schema:
        call = sql.SQL("SELECT {}(%s::regclass, %s)").format(sql.Identifier(schema[0][0], "pg_prewarm"))
        jobs = [(index, "buffer") for index, _ in indexes]
        jobs += [(t.relation, "buffer") for t in fits] + [(t.relation, "prefetch") for t in rest]
        try:
            blocks = await _bounded((_statement(pool, call, job) for job in jobs), concurrency)
            return summary | {"method": "pg_prewarm", "blocks": sum(r[0][0] for r in blocks)}
        except (errors.InsufficientPrivilege, errors.FeatureNotSupported, errors.UndefinedFunction) as exc:
            # e.g. no privilege on an index, or no prefetch on this platform: read the pages instead
            log.warning("pg_prewarm failed (%s); reading index pages instead", exc)
    await _bounded((_touch(pool, t, heap=False) for t in catalog.tables.values()), concurrency)
    await _bounded((_touch(pool, t, heap=True) for t in fits), concurrency)
    return summary | {"method": "index_scan"}


async def _touch(pool: AsyncConnectionPool, table: FeatureTable, *, heap: bool) -> None:
    """Read every page of the key index (index-only scan), and with ``heap`` the table too."""
    query = sql.SQL("SELECT count({row}) FROM (SELECT {cols} FROM {table} ORDER BY {key}) AS s").format(
        row=sql.SQL("s.*") if heap else sql.SQL("*"),
        cols=sql.SQL("*") if heap else sql.Identifier(table.key),
        table=table.ident,
        key=sql.Identifier(table.key),
    )
    async with pool.connection() as conn:
        async with conn.transaction():
            await conn.execute(
                "SELECT set_config('statement_timeout', %s, true), set_config('enable_seqscan', 'off', true),"
                " set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true)",
                (STEP_TIMEOUT,),
            )
            await conn.execute(query)


# -- 2. and 3. lookups -----------------------------------------------------------------------


async def sample_keys(reader: FeatureReader, seed: int | None = None) -> Samples:
    """Keys spread over each key column (its histogram bounds), split into warm and probe sets."""
    tables = list(reader.catalog.tables.values())
    samples = Samples()
    if not tables:
        return samples
    rows = await _statement(
        reader.pool, HISTOGRAM, (reader.catalog.schema, [t.name for t in tables], [t.key for t in tables])
    )
    key_of = {t.name: t.key for t in tables}
    bounds = {name: keys or [] for name, column, keys in rows if key_of.get(name) == column}
    keys: list[str] = []
    for table in tables:
        found = bounds.get(table.name)
        if not found:  # never analyzed: the first keys of the index (an index-only scan)
            query = sql.SQL("SELECT {key}::text FROM {table} ORDER BY {key} LIMIT %s").format(
                key=sql.Identifier(table.key), table=table.ident
            )
            found = [r[0] for r in await _statement(reader.pool, query, (SAMPLE_PER_TABLE,))]
        keys.extend(found[:SAMPLE_PER_TABLE])
    keys = list(dict.fromkeys(keys))
    random.Random(seed).shuffle(keys)
    samples.warm, samples.probe = keys[0::2], keys[1::2] or keys[:]
    return samples


async def look_up_hot_keys(reader: FeatureReader, limit: int) -> int:
    keys = await hotkeys.top(reader.pool, limit)
    for start in range(0, len(keys), MAX_KEYS):
        await reader.lookup(keys[start : start + MAX_KEYS])
    return len(keys)


async def synthetic_lookups(reader: FeatureReader, keys: Sequence[str], count: int, concurrency: int) -> int:
    """``count`` lookups over every table, alternately of 1 and 10 keys, ``concurrency`` at a time."""
    if not keys or count <= 0 or not reader.catalog.tables:
        return 0
    rng = random.Random(count)

    def batch(i: int) -> list[str]:
        return rng.sample(list(keys), min(len(keys), 1 if i % 2 == 0 else 10))

    await _bounded((reader.lookup(batch(i)) for i in range(count)), concurrency)
    return count


@dataclass
class WarmupReport:
    steps: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    server_started_at: dt.datetime | None = None  # the server start this warm-up was for

    def as_dict(self) -> dict:
        started = self.server_started_at.isoformat() if self.server_started_at else None
        return {"seconds": round(self.seconds, 3), "serverStartedAt": started, "steps": self.steps}


async def warm_up_as_set(reader: FeatureReader, settings: FeatureSettings, *, concurrency: int,
                         samples: Samples | None = None) -> WarmupReport:
    """``warm_up`` as the ``CACHESVC_FEATURES_*`` settings say."""
    return await warm_up(
        reader, prewarm_fraction=settings.prewarm_fraction, hot_key_limit=settings.warmup_hot_keys,
        lookups=settings.warmup_lookups, concurrency=concurrency, samples=samples,
    )


async def warm_up(
    reader: FeatureReader,
    *,
    prewarm_fraction: float,
    hot_key_limit: int,
    lookups: int,
    concurrency: int,
    samples: Samples | None = None,
) -> WarmupReport:
    """Run the three steps once; raises on a database error (the caller retries). The report
    names the server start it warmed up for, read first: a restart during warm-up is then
    seen as a restart after it."""
    report = WarmupReport()
    began = time.perf_counter()
    report.server_started_at = await read_server_start(reader.pool)

    async def step(name: str, coro) -> None:
        start = time.perf_counter()
        result = await coro
        report.steps[name] = (result if isinstance(result, dict) else {"count": result}) | {
            "seconds": round(time.perf_counter() - start, 3)
        }
        log.info("feature warm-up: %s done", name, extra={"fields": report.steps[name]})

    await step("prewarm", prewarm(reader, prewarm_fraction))
    await step("hotKeys", look_up_hot_keys(reader, hot_key_limit))
    samples = samples if samples is not None else await sample_keys(reader)
    await step("syntheticLookups", synthetic_lookups(reader, samples.warm, lookups, concurrency))
    report.seconds = time.perf_counter() - began
    return report
