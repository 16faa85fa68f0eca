"""Feature lookups: N entity keys x M feature tables in one network round trip.

Two ways to send a lookup, both one pipeline ``BEGIN; set_config(timeouts); …; COMMIT``:

- ``statement``: one ``UNION ALL`` statement with a branch per table;
- ``pipeline``: one statement per table, all queued in the same pipeline.

Each branch joins the requested keys (``unnest … WITH ORDINALITY``, so every row comes back
with the position of the key that found it) to the table on its primary key, and returns
the row as JSON built by PostgreSQL (``row_to_json``): numbers stay numbers, timestamps are
ISO 8601, and the service passes the text through without parsing it. Keys are sent once
per key type (text, bigint, uuid …), each already checked in Python against the type, so a
key that cannot exist in a table is a miss there instead of a cast error.

Each statement runs under READ COMMITTED with its own snapshot taken after its table locks
are granted, so a table swapped in by ``features load`` is seen whole, old or new, never
half; a REPEATABLE READ snapshot taken before a swap would see the new table empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from psycopg import AsyncConnection, sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from cachesvc.features.catalog import Catalog, FeatureTable

STRATEGIES = ("statement", "pipeline")
MAX_KEYS = 100

BEGIN = "BEGIN READ ONLY"
# Timeouts for this transaction, and the planner's cost of a random page read as for data
# in memory (what warm-up makes it): a key lookup then takes the primary key index unless a
# table is so small that reading it whole is cheaper.
SET_CONTEXT = (
    "SELECT set_config('statement_timeout', %s, true), set_config('idle_in_transaction_session_timeout', %s, true),"
    " set_config('random_page_cost', '1.1', true)"
)

Features = dict[str, msgspec.Raw | None]  # table -> row as JSON, or None for a miss


def _branch(table: FeatureTable, index: int | None) -> sql.Composed:
    """Rows of ``table`` for the keys of its type, with the key's position (1-based)."""
    head = sql.SQL("SELECT {index}, ").format(index=sql.Literal(index)) if index is not None else sql.SQL("SELECT ")
    return head + sql.SQL(
        "q.ord, row_to_json(t)::text"
        " FROM unnest({keys}::{type}[]) WITH ORDINALITY AS q(k, ord)"
        " JOIN {table} AS t ON t.{key} = q.k"
    ).format(
        keys=sql.Placeholder(table.key_type),
        type=sql.SQL(table.key_type),
        table=table.ident,
        key=sql.Identifier(table.key),
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """A lookup queued on a connection's pipeline; ``collect`` once the pipeline is synced."""

    keys: Sequence[str]
    tables: Sequence[FeatureTable]
    cursors: list
    union: bool  # one UNION ALL cursor, rows tagged with the table's index

    async def collect(self) -> list[Features]:
        results: list[Features] = [dict.fromkeys((t.name for t in self.tables), None) for _ in self.keys]
        if self.union:
            for index, ordinal, row in await self.cursors[0].fetchall():
                results[ordinal - 1][self.tables[index].name] = msgspec.Raw(row.encode())
        else:
            for table, cur in zip(self.tables, self.cursors):
                for ordinal, row in await cur.fetchall():
                    results[ordinal - 1][table.name] = msgspec.Raw(row.encode())
        return results


class FeatureReader:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        catalog: Catalog,
        *,
        strategy: str = "statement",
        statement_timeout_ms: int = 5000,
        idle_in_transaction_timeout_ms: int = 10000,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        self.pool = pool
        self.catalog = catalog
        self.strategy = strategy
        self._timeouts = (str(statement_timeout_ms), str(idle_in_transaction_timeout_ms))
        self._union_cache: dict[tuple[str, ...], sql.Composed] = {}
        self._single = {t.name: _branch(t, None) for t in catalog.tables.values()}

    def union_sql(self, tables: Sequence[FeatureTable]) -> sql.Composed:
        names = tuple(t.name for t in tables)
        stmt = self._union_cache.get(names)
        if stmt is None:
            stmt = sql.SQL(" UNION ALL ").join(_branch(t, i) for i, t in enumerate(tables))
            if len(self._union_cache) >= 256:
                self._union_cache.clear()
            self._union_cache[names] = stmt
        return stmt

    @staticmethod
    def params(keys: Sequence[str], tables: Sequence[FeatureTable]) -> dict[str, list[str | None]]:
        """One array per key type, in request order, None where a key cannot be of that type."""
        by_type: dict[str, list[str | None]] = {}
        for table in tables:
            if table.key_type not in by_type:
                by_type[table.key_type] = [table.normalise(k) for k in keys]
        return by_type

    async def queue(
        self, conn: AsyncConnection, keys: Sequence[str], tables: Sequence[FeatureTable], strategy: str | None = None
    ) -> Pending:
        """Queue the lookup's statement(s) on ``conn`` (inside its pipeline and transaction)."""
        if not tables or not keys:
            return Pending(keys, tables, [], False)
        params = self.params(keys, tables)
        if (strategy or self.strategy) == "statement" and len(tables) > 1:
            return Pending(keys, tables, [await conn.execute(self.union_sql(tables), params)], True)
        cursors = [await conn.execute(self._single[t.name], {t.key_type: params[t.key_type]}) for t in tables]
        return Pending(keys, tables, cursors, False)

    async def lookup(
        self, keys: Sequence[str], tables: Sequence[FeatureTable] | None = None, *, strategy: str | None = None
    ) -> list[Features]:
        """Features of each key (in request order) from each table, in one round trip."""
        tables = self.catalog.resolve(None) if tables is None else tables
        if not tables or not keys:
            return [{} for _ in keys]
        async with self.pool.connection() as conn:
            try:
                async with conn.pipeline():
                    await conn.execute(BEGIN)
                    await conn.execute(SET_CONTEXT, self._timeouts)
                    pending = await self.queue(conn, keys, tables, strategy)
                    await conn.execute("COMMIT")
            except BaseException:
                if conn.info.transaction_status != TransactionStatus.IDLE:
                    await conn.rollback()
                raise
            return await pending.collect()
