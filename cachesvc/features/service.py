"""The feature read path inside the service: catalog, reader, hot keys, warm-up.

``discover`` builds it and starts nothing; its loops (warm-up and readiness, the hot keys
flush, the replica's warm-up) are run by the service's one owner of background loops, and
its final hot keys flush is called at shutdown (both in cachesvc.api.context).

With a read replica, lookups go there (cachesvc.db.routing) once the replica's buffers are warm:
each time the replica's server (re)starts, its tables are warmed up the way the primary's are
before ``/readyz`` turns ready, while lookups stay on the primary. The primary's warm-up and
readiness gate do not depend on the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from psycopg_pool import AsyncConnectionPool

from cachesvc.features import catalog as feature_catalog
from cachesvc.features import warmup
from cachesvc.features.catalog import FeatureTable
from cachesvc.features.hotkeys import HotKeys
from cachesvc.features.readiness import Readiness
from cachesvc.db.routing import ReadRouter, Reads
from cachesvc.db.transaction import Transactions
from cachesvc.features.reader import CONTEXT, FeatureReader, Features
from cachesvc.settings import FeatureSettings, ReplicaSettings

log = logging.getLogger("cachesvc.features")


class FeatureService:
    def __init__(
        self, reader: FeatureReader, hot_keys: HotKeys, readiness: Readiness, reads: Reads,
        settings: FeatureSettings, replica_reader: FeatureReader | None = None,
    ) -> None:
        self.settings = settings
        self.reader = reader  # the primary's: warm-up, readiness, statistics
        self.replica_reader = replica_reader  # the replica's: its warm-up
        self.reads = reads  # lookups, on the server the router chooses
        self.router = reads.router
        self.catalog = reader.catalog
        self.hot_keys = hot_keys
        self.readiness = readiness
        self.replica_warmed_for = None  # the replica server start its warm-up was for

    async def lookup(self, keys: list[str], tables: list[FeatureTable]) -> list[Features]:
        """Features of ``keys``: on the replica when it is usable and warm, else on the primary."""
        target = self.router.choose(warm=self.replica_warm())
        plan = self.reader.plan(keys, tables)
        results = await self.reads.run(target, plan.statements, context=CONTEXT) if plan.statements else []
        return plan.collect(results)

    def replica_warm(self) -> bool:
        monitor = self.router.monitor
        if monitor is None or not self.readiness.enabled:
            return True
        return monitor.server_started_at is not None and self.replica_warmed_for == monitor.server_started_at

    def warms_replica(self) -> bool:
        """Whether there is a replica whose tables ``warm_replica`` keeps warm."""
        return self.replica_reader is not None and self.router.monitor is not None and self.settings.warmup

    async def warm_replica(self) -> None:
        """Warm the replica up whenever its server has (re)started: new buffers are cold."""
        monitor = self.router.monitor
        while True:
            await asyncio.sleep(monitor.interval_s)
            started = monitor.server_started_at
            if not monitor.usable() or started is None or started == self.replica_warmed_for:
                continue
            try:
                report = await warmup.warm_up(
                    self.replica_reader,
                    prewarm_fraction=self.settings.prewarm_fraction,
                    hot_key_limit=self.settings.warmup_hot_keys,
                    lookups=self.settings.warmup_lookups,
                    concurrency=self.replica_reader.pool.max_size,
                )
            except Exception as exc:  # the replica went away meanwhile: lookups stay on the primary
                log.warning("replica feature warm-up failed, retrying: %s", exc)
                await asyncio.sleep(1.0)
                continue
            self.replica_warmed_for = started
            log.info("replica feature tables warm", extra={"fields": report.as_dict()})

    @classmethod
    async def discover(
        cls, pool: AsyncConnectionPool, settings: FeatureSettings, transactions: Transactions,
        router: ReadRouter | None = None, read_pool: AsyncConnectionPool | None = None,
    ) -> FeatureService:
        """Discover the tables (CatalogError refuses to start) and build the path; starts nothing.
        ``transactions``: the runner its reads go through (the request budget, retries' metric)."""
        async with pool.connection() as conn:
            found = await feature_catalog.discover(
                conn, settings.schema, feature_catalog.parse_allow_list(settings.tables)
            )
        if found.skipped:
            log.warning("not feature tables (names must match %s): %s", feature_catalog.TABLE_NAME_RE.pattern, ", ".join(found.skipped))
        log.info(
            "feature tables", extra={"fields": {"schema": found.schema, "tables": list(found.tables), "strategy": settings.strategy}}
        )
        def reader_on(on: AsyncConnectionPool, retry: bool) -> FeatureReader:
            return FeatureReader(on, found, strategy=settings.strategy, transactions=transactions, retry=retry)

        reader = reader_on(pool, True)
        replica_reader = reader_on(read_pool, False) if read_pool is not None else None
        reads = Reads(transactions, router or ReadRouter(None, ReplicaSettings()), pool, read_pool)
        return cls(reader, HotKeys(), Readiness(reader, settings), reads, settings, replica_reader)

    async def wait_warm(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for warm-up (``readiness.run``, started by the caller), so
        that a small data set is warm before the first request; a longer warm-up goes on while
        /readyz answers 503."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.readiness.ready.wait()

    async def flush_hot_keys(self) -> None:
        """The final flush, at shutdown, once the hot keys loop has stopped."""
        try:
            await self.hot_keys.flush(self.reader.pool)
        except Exception as exc:
            log.warning("final hot keys flush failed: %s", exc)
