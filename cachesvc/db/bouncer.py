"""PgBouncer's own figures (``SHOW POOLS``, ``SHOW STATS``) as Prometheus metrics.

Read at scrape time from PgBouncer's admin console, as the stats user the service's PgBouncer
configuration names (``CACHESVC_MONITOR_DATABASE_URL``: the same login, database
``pgbouncer``), over one connection kept open between scrapes (each scrape is two statements,
bounded by ``TIMEOUT_S``). The console speaks the simple query protocol only, hence the client
cursor. A PgBouncer that cannot be read leaves ``cachesvc_pgbouncer_up`` at 0 and the rest of
``/metrics`` as it was.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

log = logging.getLogger("cachesvc.db")

TIMEOUT_S = 1.0

# SHOW POOLS columns exported as gauges (per database and user); maxwait is split in s + us.
POOL_GAUGES = {
    "cl_active": "client connections linked to a server connection or idle",
    "cl_waiting": "client connections waiting for a server connection",
    "sv_active": "server connections linked to a client",
    "sv_idle": "server connections idle and ready",
    "sv_used": "server connections idle, to be checked before reuse",
    "sv_login": "server connections logging in",
}
# SHOW STATS totals exported as counters (per database); times are microseconds there.
STAT_COUNTERS = {
    "total_xact_count": ("transactions", "transactions pooled", 1),
    "total_query_count": ("queries", "queries pooled", 1),
    "total_xact_time": ("transaction_seconds", "time spent in transactions", 1e6),
    "total_query_time": ("query_seconds", "time spent in queries", 1e6),
    "total_wait_time": ("client_wait_seconds", "time clients waited for a server connection", 1e6),
    "total_received": ("received_bytes", "bytes received from clients", 1),
    "total_sent": ("sent_bytes", "bytes sent to clients", 1),
}


def console_url(monitor_url: str) -> str:
    """The admin console's DSN: the monitor login's, with database ``pgbouncer``."""
    parts = urlsplit(monitor_url)
    return urlunsplit(parts._replace(path="/pgbouncer"))


@dataclass
class BouncerStats:
    """The last figures read from PgBouncer; ``refresh`` reads them again."""

    url: str
    up: bool = False
    pools: list[dict] = field(default_factory=list)
    stats: list[dict] = field(default_factory=list)
    _conn: psycopg.AsyncConnection | None = None

    async def refresh(self) -> None:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                if self._conn is None or self._conn.closed:
                    self._conn = await psycopg.AsyncConnection.connect(
                        self.url, autocommit=True, connect_timeout=2, cursor_factory=psycopg.AsyncClientCursor,
                    )
                self.pools = await self._show("POOLS")
                self.stats = await self._show("STATS")
            self.up = True
        except (psycopg.Error, OSError, TimeoutError) as exc:
            if self.up:
                log.warning("PgBouncer's figures cannot be read: %s", exc)
            self.up = False
            await self.close()

    async def _show(self, what: str) -> list[dict]:
        cur = await self._conn.execute(f"SHOW {what}")
        names = [c.name for c in cur.description]
        return [dict(zip(names, row)) for row in await cur.fetchall()]

    async def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()

    def collect(self) -> Iterator:
        yield GaugeMetricFamily("cachesvc_pgbouncer_up", "1 when PgBouncer's admin console answered the last scrape",
                                value=int(self.up))
        if not self.up:
            return
        for column, doc in POOL_GAUGES.items():
            family = GaugeMetricFamily(f"cachesvc_pgbouncer_pool_{column}", doc, labels=["database", "user"])
            for pool in self.pools:
                family.add_metric([pool["database"], pool["user"]], float(pool.get(column) or 0))
            yield family
        wait = GaugeMetricFamily("cachesvc_pgbouncer_pool_maxwait_seconds",
                                 "how long the oldest waiting client has waited", labels=["database", "user"])
        for pool in self.pools:
            wait.add_metric([pool["database"], pool["user"]], (pool.get("maxwait") or 0) + (pool.get("maxwait_us") or 0) / 1e6)
        yield wait
        for column, (name, doc, scale) in STAT_COUNTERS.items():
            family = CounterMetricFamily(f"cachesvc_pgbouncer_{name}", doc, labels=["database"])
            for row in self.stats:
                family.add_metric([row["database"]], float(row.get(column) or 0) / scale)
            yield family
