"""The service's one connection pool: fixed size, checked on checkout, PgBouncer-safe."""

from __future__ import annotations

import asyncio
import logging

import psycopg
from psycopg_pool import AsyncConnectionPool

from cachesvc.settings import Settings

log = logging.getLogger("cachesvc.db")


def connection_kwargs(settings: Settings) -> dict:
    kwargs = {
        # Each request sends its own BEGIN ... COMMIT inside one pipeline (one round trip).
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


def create_pool(settings: Settings) -> AsyncConnectionPool:
    return AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_size,
        max_size=settings.pool_size,
        kwargs=connection_kwargs(settings),
        timeout=settings.pool_timeout_s,
        check=AsyncConnectionPool.check_connection,
        name="cachesvc",
        open=False,
    )


async def open_pool(pool: AsyncConnectionPool, settings: Settings, first_delay: float = 0.5) -> None:
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
