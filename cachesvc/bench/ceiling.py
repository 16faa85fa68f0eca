"""The database's own ceiling: pgbench running the transactions the service sends.

The scripts are generated, not copied, and the query string is the one the transaction runner
(``Transactions``) builds for a read: ``BEGIN READ ONLY``, the transaction-local settings,
the statement, ``COMMIT``, sent as one simple-protocol query (pgbench's ``\\;`` compound
command, ``-M simple``). Only the parameters differ: pgbench variables stand where the service
binds values. A change to a statement or to the runner's query shape is measured by the next
run without anyone editing this file.

- cache GET (``get_script``): ``cachesvc.cache.store``'s coalesced ``BATCH_GET`` for a batch
  of one, with the context a batched read sets, bound by a stand-in binder (``_Binder``);
- feature lookup (``feature_script``): ``GET /v1/features/{key}?tables=…``, the reader's plan
  for one key over the tables asked (a coalesced batch of one: the service's batches run the
  same plan), with the reader's context, bound by a real client-side cursor as the service
  binds it, for a stand-in key; then ``:k`` replaces that key.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cachesvc.cache import statements, store
from cachesvc.db.transaction import Transactions
from cachesvc.features import catalog
from cachesvc.features.reader import CONTEXT, FeatureReader
from cachesvc.localstack import LocalStack, find_pg_bindir
from cachesvc.settings import Settings

# The user of a transaction, computed by pgbench from its variable :u (users are numbered).
USER_TEXT = "'00000000-0000-4000-8000-' || lpad(:u::text, 12, '0')"
_USER_STANDIN = uuid.UUID(int=0)  # stands for that user where the store takes a uuid


@dataclass(frozen=True)
class Var:
    """A parameter pgbench computes for each transaction: SQL over its variables."""

    sql: str


class _Binder:
    """Binds parameters as the runner's client-side cursor does, but as pgbench expressions."""

    def mogrify(self, query: str, params) -> str:
        return query % tuple(self._literal(p) for p in params)

    @staticmethod
    def _literal(value) -> str:
        if isinstance(value, Var):
            return value.sql
        if value == str(_USER_STANDIN):
            return f"({USER_TEXT})"
        if isinstance(value, str):
            return "'" + value.replace("'", "''") + "'"
        raise TypeError(f"no pgbench form for the parameter {value!r}")


def get_script(transactions: Transactions, request_timeout_s: float, users: int, keys: int) -> str:
    """One GET as the service runs it: a batch of one (user ``:u``, content type ``chapter``,
    key ``key-:k``), ``users`` users and keys 1..``keys`` drawn at random."""
    params = (Var(f"ARRAY[({USER_TEXT})::uuid]"), Var("ARRAY['chapter']"), Var("ARRAY['key-' || :k]"))
    query = transactions._query(
        _Binder(), [(statements.BATCH_GET, params)], store._reading_for([_USER_STANDIN]), True, None, request_timeout_s
    )
    return f"\\set u random(1, {users})\n\\set k random(1, {keys})\n{compound(query)}"


def compound(query: str) -> str:
    """The runner's query string as one pgbench command: its statements joined by ``\\;``."""
    return " \\;\n".join(part.strip() for part in query.split(";\n")) + ";\n"


# Stand for the entity key while the service's query is built: keys no other part of it spells.
# Two, so that the query built for each can prove the key is everywhere it is and nowhere else.
_KEY_STANDINS = ("987654321", "987654322")


def feature_query(conn: psycopg.Connection, settings: Settings, tables: list[str]) -> str:
    """The query string the service sends for ``GET /v1/features/{key}?tables=<tables>``, with
    ``:k`` where the key is (pgbench replaces ``:k`` wherever it stands, inside a literal too).

    Built by the service's own parts, on ``conn`` (any login that may read the feature tables):
    the catalog as the service discovers it (its schema and allow-list), the reader's plan for
    one key (its strategy), the reader's context, and the runner's read-only query string bound
    by a client-side cursor, as the service binds it."""
    found = catalog.discover_sync(conn, settings.features.schema, catalog.parse_allow_list(settings.features.tables))
    transactions = Transactions.from_settings(settings.database)
    reader = FeatureReader(None, found, strategy=settings.features.strategy, transactions=transactions)
    asked = found.resolve(tables)
    cursor = psycopg.ClientCursor(conn)
    queries = []
    for standin in _KEY_STANDINS:
        plan = reader.plan([standin], asked)
        if not plan.statements:
            raise ValueError(f"an integer key can be in none of the tables {tables}")
        query = transactions._query(cursor, plan.statements, CONTEXT, True, None, settings.database.request_timeout_s)
        queries.append(query.replace(standin, ":k"))
    if queries[0] != queries[1] or ":k" not in queries[0]:
        raise AssertionError(f"the key does not stand alone in the service's query:\n{queries[0]}")
    return queries[0]


def feature_script(conn: psycopg.Connection, settings: Settings, tables: list[str], rows: int) -> str:
    """One feature lookup as the service runs it (``feature_query``), keys 1..``rows`` drawn at random."""
    return f"\\set k random(1, {rows})\n{compound(feature_query(conn, settings, tables))}"


def pgbench(stack: LocalStack, script: Path, clients: int, *, seconds: int | None = None,
            transactions: int | None = None) -> dict:
    """Run ``script`` with pgbench through PgBouncer as the service's login, for ``seconds`` or
    ``transactions`` per client: TPS, average latency, transactions processed."""
    env = os.environ | {"PGPASSWORD": stack.passwords["cachesvc_app"]}
    length = ["-T", str(seconds)] if seconds is not None else ["-t", str(transactions)]
    result = subprocess.run(
        [str(find_pg_bindir() / "pgbench"), "-n", "-M", "simple", "-c", str(clients), "-j", "1", *length,
         "-h", "127.0.0.1", "-p", str(stack.bouncer_port), "-U", "cachesvc_app", "-f", str(script),
         "cachesvc"],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stdout[-1000:]}{result.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", result.stdout).group(1))
    latency = float(re.search(r"latency average = ([0-9.]+) ms", result.stdout).group(1))
    processed = int(re.search(r"number of transactions actually processed: ([0-9]+)", result.stdout).group(1))
    return {"tps": tps, "latency_avg_ms": latency, "transactions": processed}


def pgbench_ceiling(stack: LocalStack, home: Path, clients: int, seconds: int, users: int, keys: int) -> dict:
    """TPS of the service's GET transaction, run by pgbench through PgBouncer."""
    settings = stack.settings()
    script = home / "get.sql"
    script.write_text(get_script(Transactions.from_settings(settings.database), settings.database.request_timeout_s, users, keys))
    return pgbench(stack, script, clients, seconds=seconds)


def pgbench_feature_ceiling(stack: LocalStack, home: Path, clients: int, seconds: int, tables: list[str], rows: int) -> dict:
    """TPS of the service's transaction for ``GET /v1/features/{key}?tables=<tables>``, keys
    1..``rows`` at random, run by pgbench through PgBouncer."""
    settings = stack.settings()
    script = home / "features.sql"
    with psycopg.connect(stack.url("cachesvc_app"), autocommit=True, prepare_threshold=None) as conn:
        script.write_text(feature_script(conn, settings, tables, rows))
    return pgbench(stack, script, clients, seconds=seconds)
