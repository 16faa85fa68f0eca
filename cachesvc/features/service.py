"""The feature read path's lifecycle inside the service: catalog, reader, hot keys, warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from psycopg_pool import AsyncConnectionPool

from cachesvc.features import catalog as feature_catalog
from cachesvc.features.hotkeys import HotKeys
from cachesvc.features.readiness import Readiness
from cachesvc.features.reader import FeatureReader
from cachesvc.settings import Settings

log = logging.getLogger("cachesvc.features")


class FeatureService:
    def __init__(self, reader: FeatureReader, hot_keys: HotKeys, readiness: Readiness) -> None:
        self.reader = reader
        self.catalog = reader.catalog
        self.hot_keys = hot_keys
        self.readiness = readiness
        self._tasks: list[asyncio.Task] = []

    @classmethod
    async def open(cls, pool: AsyncConnectionPool, settings: Settings) -> FeatureService:
        """Discover the tables (CatalogError refuses to start), then warm up in the background.

        Waits up to ``features_warmup_wait_s`` for warm-up, so that a small data set is warm
        before the first request; a longer warm-up goes on while /readyz answers 503.
        """
        async with pool.connection() as conn:
            found = await feature_catalog.discover(
                conn, settings.features_schema, feature_catalog.parse_allow_list(settings.features_tables)
            )
        if found.skipped:
            log.warning("not feature tables (names must match %s): %s", feature_catalog.TABLE_NAME_RE.pattern, ", ".join(found.skipped))
        log.info(
            "feature tables", extra={"fields": {"schema": found.schema, "tables": list(found.tables), "strategy": settings.features_strategy}}
        )
        reader = FeatureReader(
            pool,
            found,
            strategy=settings.features_strategy,
            statement_timeout_ms=settings.statement_timeout_ms,
            idle_in_transaction_timeout_ms=settings.idle_in_transaction_timeout_ms,
        )
        service = cls(reader, HotKeys(), Readiness(reader, settings))
        service._tasks = [
            asyncio.create_task(service.readiness.run(), name="features-warmup"),
            asyncio.create_task(service.hot_keys.run(pool, settings.flush_interval_s), name="features-hot-keys"),
        ]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.readiness.ready.wait(), settings.features_warmup_wait_s)
        return service

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        try:
            await self.hot_keys.flush(self.reader.pool)
        except Exception as exc:
            log.warning("final hot keys flush failed: %s", exc)
