"""The service's connection pools: fixed size, checked on checkout, PgBouncer-safe.

One pool for the primary (``CACHESVC_DATABASE_URL``) and, when a read replica is configured,
one for it (``CACHESVC_READ_DATABASE_URL``), made the same way, plus one connection to each
server for the replica's lag checks. Autocommit: every transaction is sent whole, BEGIN to
COMMIT, as one query string by the runner (cachesvc.db.transaction).
"""

from __future__ import annotations

import asyncio
import logging
import time

import psycopg
from psycopg_pool import AsyncConnectionPool

from cachesvc.settings import DatabaseSettings, ReplicaSettings

log = logging.getLogger("cachesvc.db")


def connection_kwargs(settings: DatabaseSettings) -> dict:
    kwargs = {
        # Each request sends its own BEGIN ... COMMIT in one query string (cachesvc.db.transaction).
        "autocommit": True,
        "connect_timeout": settings.connect_timeout_s,
        "application_name": "cachesvc",
        # Dead peers are noticed within about a minute even when no query is running.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    if settings.behind_pgbouncer:
        # PgBouncer in transaction mode may hand each transaction a different server
        # connection, so a statement prepared on one may not exist on the next.
        kwargs["prepare_threshold"] = None
    return kwargs


# A connection used within this many seconds is handed out without a check: checking every
# checkout costs a full round trip per request (measured: 8.5 % of the service's CPU under
# load). A busy connection is known good; one that sat idle is checked first. A connection
# that still dies under a request is handled by the runner's retry (reads and PUT).
CHECK_IF_IDLE_S = 5.0


async def check_if_idle(conn: psycopg.AsyncConnection) -> None:
    last_used = getattr(conn, "_cachesvc_last_used", 0.0)
    if time.monotonic() - last_used > CHECK_IF_IDLE_S:
        await AsyncConnectionPool.check_connection(conn)


async def mark_used(conn: psycopg.AsyncConnection) -> None:
    conn._cachesvc_last_used = time.monotonic()


def create_pool(settings: DatabaseSettings) -> AsyncConnectionPool:
    return _fixed_pool(settings.database_url, settings.pool_size, settings, "cachesvc")


def create_check_pools(
    settings: DatabaseSettings, replica: ReplicaSettings
) -> tuple[AsyncConnectionPool, AsyncConnectionPool] | None:
    """One connection to each server for the replica's lag checks, apart from the request
    pools: a check must neither wait behind requests nor take a connection from them (a busy
    replica pool is not a replica down). Open them with ``open(wait=False)``."""
    if not replica.url:
        return None
    return (
        _fixed_pool(settings.database_url, 1, settings, "cachesvc-check"),
        _fixed_pool(replica.url, 1, settings, "cachesvc-read-check"),
    )


def create_read_pool(settings: DatabaseSettings, replica: ReplicaSettings) -> AsyncConnectionPool | None:
    """The read replica's pool (None without ``CACHESVC_READ_DATABASE_URL``).

    Open it with ``open(wait=False)``: the service starts, and stays ready, while the replica
    is down; reads go to the primary meanwhile (cachesvc.db.routing).
    """
    if not replica.url:
        return None
    return _fixed_pool(replica.url, replica.pool_size, settings, "cachesvc-read")


def _fixed_pool(url: str, size: int, settings: DatabaseSettings, name: str) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        url,
        min_size=size,
        max_size=size,
        kwargs=connection_kwargs(settings),
        timeout=settings.pool_timeout_s,
        check=check_if_idle,
        reset=mark_used,
        name=name,
        open=False,
    )


async def open_pool(pool: AsyncConnectionPool, settings: DatabaseSettings, first_delay: float = 0.5) -> None:
    """Open the pool, retrying with exponential backoff while the database is unreachable."""
    delay = first_delay
    attempts = settings.startup_attempts
    for attempt in range(1, attempts + 1):
        try:
            await pool.open(wait=True, timeout=settings.connect_timeout_s + 1)
            return
        except (psycopg.OperationalError, TimeoutError, psycopg.errors.Error) as exc:
            await pool.close()
            if attempt == attempts:
                raise RuntimeError(
                    f"database unreachable after {attempts} attempts ({_where(pool)}): {exc}; "
                    "check CACHESVC_DATABASE_URL and that PgBouncer and PostgreSQL are up"
                ) from exc
            log.warning("database not reachable (attempt %d/%d), retrying in %.1fs: %s", attempt, attempts, delay, exc)
            await asyncio.sleep(delay)
            delay *= 2


def _where(pool: AsyncConnectionPool) -> str:
    """host:port/dbname of the pool's DSN, without credentials."""
    from psycopg.conninfo import conninfo_to_dict

    info = conninfo_to_dict(pool.conninfo)
    return f"{info.get('host', '?')}:{info.get('port', '?')}/{info.get('dbname', '?')}"
