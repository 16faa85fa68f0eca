"""Feature lookups: N entity keys x M feature tables in one network round trip.

Two ways to send a lookup, both one pipeline ``BEGIN; set_config(…); …; COMMIT``:

- ``statement``: one ``UNION ALL`` statement with a branch per table (the default: faster,
  see docs/features-benchmark.md);
- ``pipeline``: one statement per table, all queued in the same pipeline.

Each branch reads the table by its primary key (``key = ANY($keys)``, or ``key = $key`` for
one key, which plans faster) and returns the key as text with the row as JSON built by
PostgreSQL (``row_to_json``): numbers stay numbers, timestamps are ISO 8601, and the service
passes the text through without parsing it. Keys are sent once per key type (text, bigint,
uuid …), each already checked and spelled in Python the way PostgreSQL prints that type, so
a row maps back to the positions of the keys that asked for it, and a key that cannot exist
in a table is a miss there instead of a cast error.

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


def _branch(table: FeatureTable, index: int | None, single: bool) -> sql.Composed:
    """``[index,] key::text, row as JSON`` of the rows of ``table`` for the keys of its type."""
    head = sql.SQL("SELECT {}, ").format(sql.Literal(index)) if index is not None else sql.SQL("SELECT ")
    match = "t.{key} = {keys}::{type}" if single else "t.{key} = ANY({keys}::{type}[])"
    return head + sql.SQL("t.{key}::text, row_to_json(t)::text FROM {table} AS t WHERE " + match).format(
        keys=sql.Placeholder(table.key_type),
        type=sql.SQL(table.key_type),
        table=table.ident,
        key=sql.Identifier(table.key),
    )


@dataclass(frozen=True, slots=True)
class Pending:
    """A lookup queued on a connection's pipeline; ``collect`` once the pipeline is synced."""

    keys: Sequence[str]
    tables: Sequence[FeatureTable]  # as requested: the shape of the results
    asked: Sequence[FeatureTable]  # those some key can be in: the statements sent
    positions: dict[str, dict[str, list[int]]]  # key type -> key as PostgreSQL spells it -> positions
    cursors: list
    union: bool  # one UNION ALL cursor, rows tagged with the index of the table in ``asked``

    async def collect(self) -> list[Features]:
        results: list[Features] = [dict.fromkeys((t.name for t in self.tables), None) for _ in self.keys]
        if self.union:
            rows = [(self.asked[index], key, row) for index, key, row in await self.cursors[0].fetchall()]
        else:
            rows = [(table, key, row) for table, cur in zip(self.asked, self.cursors) for key, row in await cur.fetchall()]
        for table, key, row in rows:
            raw = msgspec.Raw(row.encode())
            for position in self.positions[table.key_type].get(key, ()):
                results[position][table.name] = raw
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
        self._union_cache: dict[tuple, sql.Composed] = {}
        self._single = {
            (t.name, single): _branch(t, None, single) for t in catalog.tables.values() for single in (True, False)
        }

    def union_sql(self, tables: Sequence[FeatureTable], single: bool = False) -> sql.Composed:
        cache_key = (single, *(t.name for t in tables))
        stmt = self._union_cache.get(cache_key)
        if stmt is None:
            stmt = sql.SQL(" UNION ALL ").join(_branch(t, i, single) for i, t in enumerate(tables))
            if len(self._union_cache) >= 256:
                self._union_cache.clear()
            self._union_cache[cache_key] = stmt
        return stmt

    @staticmethod
    def positions(keys: Sequence[str], tables: Sequence[FeatureTable]) -> dict[str, dict[str, list[int]]]:
        """Per key type: each key as PostgreSQL prints that type -> where it is in the request."""
        by_type: dict[str, dict[str, list[int]]] = {}
        for table in tables:
            if table.key_type in by_type:
                continue
            spelled: dict[str, list[int]] = {}
            for position, key in enumerate(keys):
                normal = table.normalise(key)
                if normal is not None:
                    spelled.setdefault(normal, []).append(position)
            by_type[table.key_type] = spelled
        return by_type

    @staticmethod
    def params(positions: dict[str, dict[str, list[int]]], single: bool) -> dict:
        if single:
            return {kind: next(iter(spelled), None) for kind, spelled in positions.items()}
        return {kind: list(spelled) for kind, spelled in positions.items()}

    def statement(self, keys: Sequence[str], tables: Sequence[FeatureTable]) -> tuple[sql.Composed, dict]:
        """The UNION ALL statement for ``keys`` over ``tables`` and its parameters (EXPLAIN, benchmarks)."""
        positions = self.positions(keys, tables)
        single = all(len(spelled) <= 1 for spelled in positions.values())
        return self.union_sql(tables, single), self.params(positions, single)

    async def queue(
        self, conn: AsyncConnection, keys: Sequence[str], tables: Sequence[FeatureTable], strategy: str | None = None
    ) -> Pending:
        """Queue the lookup's statement(s) on ``conn`` (inside its pipeline and transaction)."""
        positions = self.positions(keys, tables)
        # Tables whose key type no requested key can be are misses without asking.
        asked = [t for t in tables if positions[t.key_type]]
        if not asked:
            return Pending(keys, tables, asked, positions, [], False)
        single = all(len(spelled) <= 1 for spelled in positions.values())
        params = self.params({t.key_type: positions[t.key_type] for t in asked}, single)
        if (strategy or self.strategy) == "statement" and len(asked) > 1:
            cursors = [await conn.execute(self.union_sql(asked, single), params)]
            return Pending(keys, tables, asked, positions, cursors, True)
        cursors = [await conn.execute(self._single[(t.name, single)], {t.key_type: params[t.key_type]}) for t in asked]
        return Pending(keys, tables, asked, positions, cursors, False)

    async def lookup(
        self, keys: Sequence[str], tables: Sequence[FeatureTable] | None = None, *, strategy: str | None = None
    ) -> list[Features]:
        """Features of each key (in request order) from each table, in one round trip."""
        tables = self.catalog.resolve(None) if tables is None else tables
        if not tables or not keys:
            return [dict.fromkeys((t.name for t in tables), None) for _ in keys]
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
