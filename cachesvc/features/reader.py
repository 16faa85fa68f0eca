"""Feature lookups: N entity keys x M feature tables in one network round trip.

Two ways to send a lookup, both one transaction through the runner (cachesvc.db.transaction:
one query string, one round trip, within the request's time budget, retried once on a lost
connection):

- ``statement`` (the default: faster, see docs/features-benchmark.md): one statement, one
  row per requested key, one column per table, each a scalar subquery reading the table by
  its primary key::

      SELECT q.ord, (SELECT row_to_json(t)::text FROM features.a AS t WHERE t.id = q.k_bigint), …
        FROM unnest($bigint_keys::bigint[], $text_keys::text[]) WITH ORDINALITY AS q(k_bigint, k_text, ord)

- ``pipeline``: one statement per table (``WHERE key = ANY($keys)``, returning the key as
  text to map rows back), all in the same query string.

Rows come back as JSON built by PostgreSQL (``row_to_json``): numbers stay numbers,
timestamps are ISO 8601, and the service passes the text through without parsing it. Keys
are sent once per key type (text, bigint, uuid …), each checked in Python against the type
and spelled the way PostgreSQL prints it, so a key that cannot exist in a table is a miss
there instead of a cast error.

Each statement runs under READ COMMITTED with its own snapshot taken after its table locks
are granted, so a table swapped in by ``features load`` is seen whole, old or new, never
half; a REPEATABLE READ snapshot taken before a swap would see the new table empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from cachesvc.features.catalog import Catalog, FeatureTable
from cachesvc.db.transaction import Statement, Transactions

STRATEGIES = ("statement", "pipeline")
MAX_KEYS = 100

# The planner's cost of a random page read as for data in memory (what warm-up makes it): a
# key lookup then takes the primary key index unless a table is so small that reading it whole
# is cheaper. Set for the transaction only, with the runner's timeouts.
CONTEXT = [("random_page_cost", "1.1")]

Features = dict[str, msgspec.Raw | None]  # table -> row as JSON, or None for a miss


def _key_column(kind: str) -> sql.Identifier:
    return sql.Identifier(f"k_{kind}")


def _statement(tables: Sequence[FeatureTable]) -> sql.Composed:
    """``ord, row of table 1, row of table 2 …`` for each requested key (a NULL row on a miss)."""
    kinds = list(dict.fromkeys(t.key_type for t in tables))
    rows = sql.SQL(", ").join(
        sql.SQL("(SELECT row_to_json(t)::text FROM {table} AS t WHERE t.{key} = q.{column})").format(
            table=t.ident, key=sql.Identifier(t.key), column=_key_column(t.key_type)
        )
        for t in tables
    )
    arrays = sql.SQL(", ").join(
        sql.SQL("{}::{}[]").format(sql.Placeholder(kind), sql.SQL(kind)) for kind in kinds
    )
    columns = sql.SQL(", ").join(_key_column(kind) for kind in kinds)
    return sql.SQL("SELECT q.ord, {rows} FROM unnest({arrays}) WITH ORDINALITY AS q({columns}, ord)").format(
        rows=rows, arrays=arrays, columns=columns
    )


def _per_table(table: FeatureTable) -> sql.Composed:
    """``key::text, row`` of ``table`` for the keys of its type (the pipeline's statements)."""
    return sql.SQL("SELECT t.{key}::text, row_to_json(t)::text FROM {table} AS t WHERE t.{key} = ANY({keys}::{type}[])").format(
        keys=sql.Placeholder(table.key_type),
        type=sql.SQL(table.key_type),
        table=table.ident,
        key=sql.Identifier(table.key),
    )


@dataclass(frozen=True, slots=True)
class Plan:
    """A lookup's statements, and how their rows map back to the request."""

    keys: Sequence[str]
    tables: Sequence[FeatureTable]  # as requested: the shape of the results
    asked: Sequence[FeatureTable]  # those some key can be in: the statements sent
    positions: dict[str, dict[str, list[int]]]  # key type -> key as PostgreSQL spells it -> positions
    statements: list[Statement]
    single_statement: bool  # one statement: a row per key, a column per table of ``asked``

    def collect(self, results: Sequence[list[tuple]]) -> list[Features]:
        """The features of each key, from the rows of ``statements`` (in order)."""
        found_all: list[Features] = [dict.fromkeys((t.name for t in self.tables), None) for _ in self.keys]
        if self.single_statement:
            names = [t.name for t in self.asked]
            for ordinal, *rows in results[0]:
                found = found_all[ordinal - 1]
                for name, row in zip(names, rows):
                    if row is not None:
                        found[name] = msgspec.Raw(row.encode())
            return found_all
        for table, rows in zip(self.asked, results):
            spelled = self.positions[table.key_type]
            for key, row in rows:
                raw = msgspec.Raw(row.encode())
                for position in spelled.get(key, ()):
                    found_all[position][table.name] = raw
        return found_all


class FeatureReader:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        catalog: Catalog,
        *,
        strategy: str = "statement",
        transactions: Transactions | None = None,
        retry: bool = True,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, not {strategy!r}")
        self.pool = pool
        self.catalog = catalog
        self.strategy = strategy
        self.transactions = transactions or Transactions()
        self.retry = retry  # not on a replica: a read that fails there is the primary's to answer
        self._statements: dict[tuple[str, ...], str] = {}
        self._per_table = {t.name: _per_table(t).as_string() for t in catalog.tables.values()}

    def statement_for(self, tables: Sequence[FeatureTable]) -> str:
        """The single statement for ``tables``, rendered to text once: binding parameters into
        text is ~10 us, rendering the composed SQL of 30 tables again ~180 us a lookup."""
        names = tuple(t.name for t in tables)
        stmt = self._statements.get(names)
        if stmt is None:
            stmt = _statement(tables).as_string()
            if len(self._statements) >= 256:  # tables subsets asked for; bounded
                self._statements.clear()
            self._statements[names] = stmt
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
    def aligned(keys: Sequence[str], tables: Sequence[FeatureTable]) -> dict[str, list[str | None]]:
        """Per key type: the keys in request order, None where a key cannot be of that type."""
        by_type: dict[str, list[str | None]] = {}
        for table in tables:
            if table.key_type not in by_type:
                by_type[table.key_type] = [table.normalise(k) for k in keys]
        return by_type

    def statement(self, keys: Sequence[str], tables: Sequence[FeatureTable]) -> tuple[sql.Composed, dict]:
        """The single statement for ``keys`` over ``tables`` and its parameters (EXPLAIN, benchmarks)."""
        return self.statement_for(tables), self.aligned(keys, tables)

    def plan(self, keys: Sequence[str], tables: Sequence[FeatureTable], strategy: str | None = None) -> Plan:
        """The statement(s) of a lookup of ``keys`` over ``tables``."""
        positions = self.positions(keys, tables)
        # Tables whose key type no requested key can be are misses without asking.
        asked = [t for t in tables if positions[t.key_type]]
        if not asked:
            return Plan(keys, tables, asked, positions, [], False)
        if (strategy or self.strategy) == "statement":
            statements: list[Statement] = [(self.statement_for(asked), self.aligned(keys, asked))]
            return Plan(keys, tables, asked, positions, statements, True)
        statements = [(self._per_table[t.name], {t.key_type: list(positions[t.key_type])}) for t in asked]
        return Plan(keys, tables, asked, positions, statements, False)

    async def lookup(
        self, keys: Sequence[str], tables: Sequence[FeatureTable] | None = None, *, strategy: str | None = None
    ) -> list[Features]:
        """Features of each key (in request order) from each table, in one round trip."""
        tables = self.catalog.resolve(None) if tables is None else tables
        plan = self.plan(keys, tables, strategy)
        if not plan.statements:
            return plan.collect([])
        results = await self.transactions.run(
            self.pool, plan.statements, context=CONTEXT, read_only=True, retry=self.retry
        )
        return plan.collect(results)
