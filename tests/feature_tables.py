"""Helpers for the feature tests: feature tables made as cache_maintainer, a service not yet ready."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence

import httpx2
import psycopg
from psycopg import sql

from cachesvc.localstack import SUPERUSER, LocalStack
from tests.conftest import LiveService


@contextlib.contextmanager
def maintainer(stack: LocalStack):
    """A direct connection acting as cache_maintainer, as `features load` and `demo` do."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        conn.execute("SET ROLE cache_maintainer")
        yield conn


def create_table(conn: psycopg.Connection, name: str, columns: str, rows: Iterable[Sequence] = ()) -> None:
    """(Re)create ``features.<name>`` with ``columns`` (DDL), fill it by COPY, analyze it."""
    ident = sql.Identifier("features", name)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(columns)))
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(ident)) as copy:
        for row in rows:
            copy.write_row(row)
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))


def drop_tables(conn: psycopg.Connection, *names: str) -> None:
    for name in names:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("features", name)))


def feature_tables(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'features'")]


class StartingService(LiveService):
    """A live service that is only waited for until it answers /healthz, not /readyz."""

    def __init__(self, *args, **kwargs) -> None:
        self._alive_only = True
        super().__init__(*args, **kwargs)
        self._alive_only = False

    def wait_ready(self, timeout: float = 30) -> None:
        if not self._alive_only:
            return super().wait_ready(timeout)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                if httpx2.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"service not alive:\n{self.log_path.read_text()}")
            time.sleep(0.05)

    def readyz(self) -> httpx2.Response:
        return httpx2.get(self.url + "/readyz", timeout=5)


def service_headers(tokens) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens(service=True)}"}
