"""The database's own ceiling: pgbench running the service's cache GET transaction.

The script is generated, not copied: the statement is ``cachesvc.cache.store``'s coalesced
``BATCH_GET`` with the context a batched read sets, and the query string is the one the
transaction runner (``Transactions``) builds for a read: ``BEGIN READ ONLY``, the
transaction-local settings, the statement, ``COMMIT``, sent as one simple-protocol query
(pgbench's ``\\;`` compound command, ``-M simple``). Only the parameters differ: pgbench
variables stand where the service binds values. A change to the statement or to the runner's
query shape is measured by the next run without anyone editing this file.
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from cachesvc.cache import statements, store
from cachesvc.db.transaction import Transactions
from cachesvc.localstack import LocalStack, find_pg_bindir

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
    compound = " \\;\n".join(part.strip() for part in query.split(";\n"))
    return f"\\set u random(1, {users})\n\\set k random(1, {keys})\n{compound};\n"


def pgbench_ceiling(stack: LocalStack, home: Path, clients: int, seconds: int, users: int, keys: int) -> dict:
    """TPS of the service's GET transaction, run by pgbench through PgBouncer."""
    settings = stack.settings()
    script = home / "get.sql"
    script.write_text(get_script(Transactions.from_settings(settings.database), settings.database.request_timeout_s, users, keys))
    env = os.environ | {"PGPASSWORD": stack.passwords["cachesvc_app"]}
    result = subprocess.run(
        [str(find_pg_bindir() / "pgbench"), "-n", "-M", "simple", "-c", str(clients), "-j", "1", "-T", str(seconds),
         "-h", "127.0.0.1", "-p", str(stack.bouncer_port), "-U", "cachesvc_app", "-f", str(script),
         "cachesvc"],
        env=env, capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"pgbench failed:\n{result.stderr[-2000:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", result.stdout).group(1))
    latency = float(re.search(r"latency average = ([0-9.]+) ms", result.stdout).group(1))
    return {"tps": tps, "latency_avg_ms": latency}
