"""The feature tables: discovered once at start-up, with their key and columns.

A feature table lives in the feature schema, has one row per entity key, and the key is
a single-column primary key of a type a request's key can be checked against in Python
(integers, text, uuid). The catalog refuses, naming the table, anything that would make a
lookup slow or wrong: no primary key, a composite one, an invalid index, a key of another
type, a table the service may not read. Names that cannot be a table in a request (not
``^[a-z][a-z0-9_]*$``, e.g. ``_load_*`` staging tables) are not feature tables.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from psycopg import sql

TABLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

# Key type as the catalog reports it -> the array type a request's keys are cast to.
KEY_TYPES = {
    "smallint": "smallint",
    "integer": "integer",
    "bigint": "bigint",
    "text": "text",
    "character varying": "text",
    "uuid": "uuid",
}
INT_RANGES = {"smallint": 2**15, "integer": 2**31, "bigint": 2**63}
INT_RE = re.compile(r"^-?[0-9]{1,19}$")

CATALOG_SQL = """
SELECT c.relname,
       has_table_privilege(c.oid, 'SELECT') AS readable,
       pk.columns AS key_columns,
       pk.usable AS key_usable,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       array_agg(format_type(a.atttypid, NULL) ORDER BY a.attnum) AS types
  FROM pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN LATERAL (
        SELECT array_agg(ka.attname::text ORDER BY k.ord) AS columns,
               bool_and(i.indisvalid AND i.indisready) AS usable
          FROM pg_index i
          CROSS JOIN unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
          JOIN pg_attribute ka ON ka.attrelid = i.indrelid AND ka.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary) AS pk ON true
 WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND NOT c.relispartition
 GROUP BY c.oid, c.relname, pk.columns, pk.usable
 ORDER BY c.relname
"""


class CatalogError(RuntimeError):
    """The feature tables cannot be served as they are; the message names the tables."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: str


@dataclass(frozen=True, slots=True)
class FeatureTable:
    name: str
    key: str
    key_type: str  # one of KEY_TYPES' values: the array type keys are cast to
    columns: tuple[Column, ...]
    ident: sql.Composable  # schema-qualified identifier, for composing statements
    relation: str  # the same as text ('"features"."clicks"'), for casts to regclass

    def normalise(self, key: str) -> str | None:
        """The key as this table's key type spells it, or None if it cannot be one."""
        if self.key_type == "text":
            return key
        if self.key_type == "uuid":
            try:
                return str(uuid.UUID(key))
            except ValueError:
                return None
        if not INT_RE.match(key):
            return None
        value, bound = int(key), INT_RANGES[self.key_type]
        return str(value) if -bound <= value < bound else None


@dataclass(frozen=True, slots=True)
class Catalog:
    schema: str
    tables: dict[str, FeatureTable]
    skipped: tuple[str, ...] = ()  # tables of the schema whose names cannot be feature tables

    def resolve(self, names: Iterable[str] | None) -> list[FeatureTable]:
        """The named tables in the order asked (all of them for None); unknown -> KeyError."""
        if names is None:
            return list(self.tables.values())
        wanted = list(dict.fromkeys(names))
        unknown = [n for n in wanted if n not in self.tables]
        if unknown:
            raise KeyError(unknown)
        return [self.tables[n] for n in wanted]

    def relation_names(self) -> list[str]:
        """``schema.table`` names, for casts to regclass."""
        return [t.relation for t in self.tables.values()]


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_allow_list(value: str) -> list[str] | None:
    names = [n.strip() for n in value.split(",") if n.strip()]
    return names or None


def build(schema: str, rows: Sequence[Sequence], allow: list[str] | None = None) -> Catalog:
    """The catalog from CATALOG_SQL's rows; raises CatalogError listing every problem."""
    found = {row[0]: row for row in rows}
    problems: list[str] = []
    if allow is not None:
        for name in allow:
            if name not in found:
                problems.append(f"{schema}.{name} is in the allow-list but does not exist (or is not a table)")
            elif not TABLE_NAME_RE.match(name):
                problems.append(f"{schema}.{name}: a feature table name must match {TABLE_NAME_RE.pattern}")
        names = [n for n in allow if n in found]
    else:
        names = [n for n in found if TABLE_NAME_RE.match(n)]
    tables: dict[str, FeatureTable] = {}
    for name in names:
        _, readable, key_columns, key_usable, columns, types = found[name]
        where = f"{schema}.{name}"
        if not key_columns:
            problems.append(f"{where} has no primary key; a feature table needs a single-column primary key")
            continue
        if len(key_columns) != 1:
            problems.append(f"{where} has a composite primary key ({', '.join(key_columns)}); one column is needed")
            continue
        if not key_usable:
            problems.append(f"{where}: its primary key index is not valid (rebuild it: REINDEX)")
            continue
        key = key_columns[0]
        key_type = dict(zip(columns, types))[key]
        if key_type not in KEY_TYPES:
            problems.append(f"{where}: key column {key} is {key_type}; supported: {', '.join(KEY_TYPES)}")
            continue
        if not readable:
            problems.append(
                f"{where} is not readable by the service's role; create feature tables after SET ROLE "
                f"cache_maintainer (its default privileges grant SELECT to cache_app), or GRANT SELECT ON {where} TO cache_app"
            )
            continue
        tables[name] = FeatureTable(
            name=name,
            key=key,
            key_type=KEY_TYPES[key_type],
            columns=tuple(Column(c, t) for c, t in zip(columns, types)),
            ident=sql.Identifier(schema, name),
            relation=f"{quote(schema)}.{quote(name)}",
        )
    if problems:
        raise CatalogError("cannot serve the feature tables: " + "; ".join(problems))
    skipped = tuple(n for n in found if n not in tables and allow is None)
    return Catalog(schema, tables, skipped)


async def discover(conn, schema: str, allow: list[str] | None = None) -> Catalog:
    """Read the catalog once (an async psycopg connection)."""
    cur = await conn.execute(CATALOG_SQL, (schema,))
    return build(schema, await cur.fetchall(), allow)


def discover_sync(conn, schema: str, allow: list[str] | None = None) -> Catalog:
    return build(schema, conn.execute(CATALOG_SQL, (schema,)).fetchall(), allow)
