"""An optional in-process cache of feature rows (``CACHESVC_FEATURES_L1_MAX_AGE_MS`` > 0).

What it promises about freshness:

- **A table replaced is seen at once.** Every lookup that answers from memory still runs one
  transaction, which reads the file node of each table it asks for
  (``pg_relation_filenode`` of the table's name as it resolves in that transaction). A row
  is kept with the file node of the table it was read from, and used only while that is the
  table's file node: ``features load``'s swap (a new table renamed into place), a drop and
  re-create, or a ``TRUNCATE`` each give the table a new file node, so the first lookup after
  one reads the new rows. A lookup that fetches rows reads the file nodes *before* the rows,
  in the same transaction: a swap in between tags new rows with the old file node, which only
  costs them a second read.
- **A row changed in place is seen within the bound.** An ``UPDATE``, ``INSERT`` or ``DELETE``
  by any writer keeps the file node, so a cached row (or a cached miss) may be served until
  ``CACHESVC_FEATURES_L1_MAX_AGE_MS`` after the transaction that read it began, never later.
- **Memory is bounded**: the rows' JSON, plus ``ENTRY_BYTES`` for each (table, key) kept,
  stays within ``CACHESVC_FEATURES_L1_MAX_MB``; the oldest read are dropped first. (A bound in
  rows would be no bound for a table of wide rows.)

Feature rows are not per user (the tables have no row-level security; who may read them is
decided by the token, before a lookup reaches this), so one cache serves every caller. Keys
are cached as the request spells them; a table's rows are cached per table, so lookups of
different table sets share them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence

from psycopg import sql

from cachesvc.features.catalog import FeatureTable
from cachesvc.features.reader import Features

# What one kept (table, key) costs besides its row's JSON: the dict slot, the key and entry
# tuples, the time, the Raw object. Measured with tracemalloc over 60,000 entries: 166 bytes
# for a cached miss, 243 besides the JSON for a row.
ENTRY_BYTES = 250
Files = dict[str, int]  # table name -> its file node in the transaction that read it
# Fetch the features of some keys (none: only the file nodes) and the file nodes, in one transaction.
Fetch = Callable[[list[str]], Awaitable[tuple[list[Features], Files]]]


def files_statement(tables: Sequence[FeatureTable]) -> str:
    """One row: the file node of each table, in order, as its name resolves now."""
    return sql.SQL("SELECT {}").format(sql.SQL(", ").join(
        sql.SQL("pg_relation_filenode({}::regclass)").format(sql.Literal(t.relation)) for t in tables
    )).as_string()


def _size(row) -> int:
    return ENTRY_BYTES + (len(row) if row is not None else 0)


class L1:
    def __init__(self, max_age_s: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.bytes = 0  # what the kept rows count for against ``max_bytes``
        self.clock = clock
        self.rows: dict[tuple[str, str], tuple[int, float, object]] = {}  # (table, key) -> (file node, read at, row)
        self._statements: dict[tuple[str, ...], str] = {}
        self.hits = 0  # keys answered from memory
        self.misses = 0  # keys read from the database
        self.replaced = 0  # keys whose cached rows were of a table since replaced

    def statement(self, tables: Sequence[FeatureTable]) -> str:
        names = tuple(t.name for t in tables)
        found = self._statements.get(names)
        if found is None:
            if len(self._statements) >= 256:
                self._statements.clear()
            found = self._statements[names] = files_statement(tables)
        return found

    @staticmethod
    def files_of(tables: Sequence[FeatureTable], row: tuple) -> Files:
        return {t.name: node for t, node in zip(tables, row)}

    def _cached(self, key: str, tables: Sequence[FeatureTable], now: float) -> tuple[Features, list[int]] | None:
        """The key's rows of every table and their file nodes, if all are cached and young enough
        (taken now: rows read for other keys of the same lookup may push these out meanwhile)."""
        found: Features = {}
        nodes = []
        for table in tables:
            entry = self.rows.get((table.name, key))
            if entry is None or now - entry[1] > self.max_age_s:
                return None
            found[table.name] = entry[2]
            nodes.append(entry[0])
        return found, nodes

    @staticmethod
    def _current(nodes: list[int], tables: Sequence[FeatureTable], files: Files) -> bool:
        return all(node == files[t.name] for node, t in zip(nodes, tables))

    def _put(self, key: str, tables: Sequence[FeatureTable], features: Features, files: Files, at: float) -> None:
        rows = self.rows
        for table in tables:
            slot = (table.name, key)
            old = rows.pop(slot, None)  # re-inserted last: the newest
            if old is not None:
                self.bytes -= _size(old[2])
            row = features[table.name]
            rows[slot] = (files[table.name], at, row)
            self.bytes += _size(row)
        while self.bytes > self.max_bytes and rows:
            self.bytes -= _size(rows.pop(next(iter(rows)))[2])

    async def lookup(self, keys: Sequence[str], tables: Sequence[FeatureTable], fetch: Fetch) -> list[Features]:
        """Features of ``keys`` from ``tables``: from memory where current, else by ``fetch``."""
        now = self.clock()
        cached = [self._cached(key, tables, now) for key in keys]
        missing = list(dict.fromkeys(key for key, entry in zip(keys, cached) if entry is None))
        fetched = await self._fetch(missing, tables, fetch)
        files = fetched.pop(None)
        replaced = list(dict.fromkeys(
            key for key, entry in zip(keys, cached) if entry is not None and not self._current(entry[1], tables, files)
        ))
        if replaced:  # a table was replaced since those rows were read: read them again
            self.replaced += len(replaced)
            fetched |= await self._fetch(replaced, tables, fetch)
            fetched.pop(None)
        answered = sum(entry is not None and key not in fetched for key, entry in zip(keys, cached))
        self.hits += answered
        self.misses += len(keys) - answered
        return [fetched[key] if key in fetched else entry[0] for key, entry in zip(keys, cached)]

    async def _fetch(self, keys: list[str], tables: Sequence[FeatureTable], fetch: Fetch) -> dict:
        """``{key: features}`` of ``keys`` read now and kept, and ``{None: file nodes}``."""
        at = self.clock()  # before the transaction begins: a row's age counts from no later
        found, files = await fetch(keys)
        out: dict = dict(zip(keys, found))
        for key, features in out.items():
            self._put(key, tables, features, files, at)
        out[None] = files
        return out
