"""The service's lifecycle: what it holds, the order it starts and stops in, and its background loops.

``open_context`` enters each component in order on one ``AsyncExitStack`` and yields the
``AppContext`` the handlers read (``request.state.ctx``: Starlette's lifespan state). Leaving
it, at shutdown or because any start-up step failed, unwinds exactly what was entered, in
reverse order:

1. the background loops are cancelled and awaited (``Background``);
2. the final flushes: hot keys, then hit counters (to the primary);
3. database work abandoned past its budget is waited for (``cachesvc.db.bounded.drain``);
4. the replica's pools close, then the primary's;
5. the access log is flushed.

The ASGI server has stopped accepting and let in-flight requests finish before step 1.
Every background loop is started in one place, ``start_loops``: the replica monitor, the
counter flush, feature warm-up and readiness, the hot keys flush and the replica's warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from cachesvc import auth, migrations
from cachesvc.api import openapi
from cachesvc.cache.counters import Counters
from cachesvc.cache.leases import Leases
from cachesvc.cache.store import CacheStore
from cachesvc.db import bounded
from cachesvc.db.bouncer import BouncerStats, console_url
from cachesvc.db.pools import create_check_pools, create_pool, create_read_pool, open_pool
from cachesvc.db.replica import ReplicaMonitor
from cachesvc.db.routing import ReadRouter
from cachesvc.db.transaction import Transactions
from cachesvc.features.catalog import CatalogError
from cachesvc.features.service import FeatureService
from cachesvc.logs import AccessLog
from cachesvc.metrics import Metrics
from cachesvc.ratelimit import RateLimiter
from cachesvc.settings import DatabaseSettings, ReplicaSettings, Settings

log = logging.getLogger("cachesvc.api")


class Background:
    """Named background loops with one owner.

    ``start`` runs a loop as a task; leaving the ``async with`` block, for whatever reason,
    cancels every loop and waits until each has ended, so that none outlives the block. A
    loop that ends by itself meanwhile (returns or raises) is logged, never silently lost.
    """

    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task] = {}
        self._stopping = False

    def start(self, name: str, loop: Coroutine) -> asyncio.Task:
        if name in self.tasks or self._stopping:
            loop.close()
            raise RuntimeError(f"background loop {name!r}: already started, or stopping")
        task = asyncio.create_task(loop, name=name)
        task.add_done_callback(self._ended)
        self.tasks[name] = task
        return task

    def _ended(self, task: asyncio.Task) -> None:
        if task.cancelled() or self._stopping:
            return
        if (exc := task.exception()) is not None:
            log.error("background loop %s failed", task.get_name(), exc_info=exc)
        else:
            log.info("background loop %s ended", task.get_name())

    async def stop(self) -> None:
        """Cancel every loop and wait for each to end."""
        self._stopping = True
        running = [task for task in self.tasks.values() if not task.done()]  # the others were logged
        for task in running:
            task.cancel()
        results = await asyncio.gather(*running, return_exceptions=True)
        for task, result in zip(running, results):
            if isinstance(result, Exception):  # it failed while being cancelled
                log.error("background loop %s failed", task.get_name(), exc_info=result)

    async def __aenter__(self) -> Background:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


@dataclass(frozen=True, slots=True)
class AppContext:
    """Everything a request may use, built once per process by ``open_context``."""

    settings: Settings
    expected_revision: str  # the schema revision this build needs (/readyz)
    metrics: Metrics
    limiter: RateLimiter
    tokens: auth.VerifiedTokens
    access_log: AccessLog | None
    pool: AsyncConnectionPool  # the primary's
    read_pool: AsyncConnectionPool | None  # the read replica's, when one is configured
    replica: ReplicaMonitor | None
    router: ReadRouter
    counters: Counters
    store: CacheStore
    leases: Leases
    features: FeatureService
    openapi: bytes  # the document /openapi.json serves
    background: Background


def context(request: Request) -> AppContext:
    """The context of the app serving ``request``."""
    return request.state.ctx


@contextlib.asynccontextmanager
async def primary_pool(settings: DatabaseSettings) -> AsyncIterator[AsyncConnectionPool]:
    """The primary's pool, open (start-up retried with backoff), closed on exit."""
    pool = create_pool(settings)
    try:
        await open_pool(pool, settings)
        yield pool
    finally:
        await pool.close()


@contextlib.asynccontextmanager
async def replica_pools(
    settings: DatabaseSettings, replica: ReplicaSettings,
) -> AsyncIterator[tuple[AsyncConnectionPool | None, tuple[AsyncConnectionPool, AsyncConnectionPool] | None]]:
    """The replica's request pool and the lag checks' pools (None without a replica).

    Opened without waiting: the service starts, and stays ready, while the replica is down."""
    read_pool, check_pools = create_read_pool(settings, replica), create_check_pools(settings, replica)
    pools = [p for p in (read_pool, *(check_pools or ())) if p is not None]
    try:
        for pool in pools:
            await pool.open(wait=False)
        yield read_pool, check_pools
    finally:
        for pool in pools:
            await pool.close()


async def flush_counters(counters: Counters, pool: AsyncConnectionPool) -> None:
    """The final counter flush, once the flush loop has stopped."""
    try:
        flushed = await counters.flush(pool)
        log.info("final counter flush", extra={"fields": {"keys": flushed}})
    except Exception as exc:
        log.error("final counter flush failed; %d counters lost: %s", counters.pending, exc)


async def drain_abandoned() -> None:
    """Wait for database work abandoned past its budget to end (cachesvc.db.bounded)."""
    if running := await bounded.drain():
        log.info("waited for abandoned database work", extra={"fields": {"tasks": running}})


def start_loops(ctx: AppContext) -> None:
    """Every background loop of the service, run by ``ctx.background``."""
    settings, background = ctx.settings, ctx.background
    if ctx.replica is not None:
        background.start("replica-monitor", ctx.replica.run())
    background.start("counter-flush", ctx.counters.run(ctx.pool, settings.flush_interval_s, ctx.metrics))
    background.start("features-warmup", ctx.features.readiness.run())
    if ctx.features.readiness.watches_restarts():
        background.start("features-rewarm", ctx.features.readiness.watch_restarts())
    background.start("features-hot-keys", ctx.features.hot_keys.run(ctx.pool, settings.flush_interval_s))
    if ctx.features.warms_replica():
        background.start("features-replica-warmup", ctx.features.warm_replica())


@contextlib.asynccontextmanager
async def open_context(
    settings: Settings, *, after_step: Callable[[str], None] = lambda step: None,
) -> AsyncIterator[AppContext]:
    """The components, entered in order; on exit (or a failed step) unwound in reverse.

    ``after_step(name)`` is called after each start-up step; what it raises fails the start
    there, as a failure of that step would (the lifecycle tests inject failures with it)."""
    async with contextlib.AsyncExitStack() as stack:
        access_log = AccessLog(settings.log_format) if settings.access_log else None
        if access_log is not None:
            stack.callback(access_log.flush)
        metrics = Metrics()
        pool = await stack.enter_async_context(primary_pool(settings.database))
        after_step("primary_pool")

        read_pool, check_pools = await stack.enter_async_context(replica_pools(settings.database, settings.replica))
        stack.push_async_callback(drain_abandoned)  # before any pool closes
        replica = ReplicaMonitor(*check_pools, read_pool, settings.replica) if check_pools else None
        if replica is not None:
            await replica.check()  # so that reads may go there from the first request
        after_step("replica")

        router = ReadRouter(replica, settings.replica)
        counters = Counters()
        store = CacheStore(
            pool, settings.database, counters, on_retry=lambda: metrics.retries.labels("cache").inc(),
            read_pool=read_pool, router=router,
        )
        stack.push_async_callback(flush_counters, counters, pool)
        try:
            features = await FeatureService.discover(
                pool, settings.features,
                Transactions.from_settings(settings.database, on_retry=lambda: metrics.retries.labels("features").inc()),
                router, read_pool,
            )
        except CatalogError as exc:
            log.error("refusing to start: %s", exc)
            raise
        stack.push_async_callback(features.flush_hot_keys)  # before the counters, after the loops stop
        metrics.watch(pool, read_pool, counters, store.batchers.values(), router)
        metrics.features = features
        if settings.database.monitor_database_url and settings.database.behind_pgbouncer:
            metrics.bouncer = BouncerStats(console_url(settings.database.monitor_database_url))
            stack.push_async_callback(metrics.bouncer.close)
        after_step("features")

        document = openapi.document_bytes(settings.max_ttl_s, list(features.catalog.tables), settings.semantic.embedding_dim)
        background = await stack.enter_async_context(Background())  # left first: the loops stop before the flushes
        ctx = AppContext(
            settings=settings,
            expected_revision=migrations.head_revision(),
            metrics=metrics,
            limiter=RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
            tokens=auth.VerifiedTokens(settings.jwt_secret, settings.jwt_audience),
            access_log=access_log,
            pool=pool,
            read_pool=read_pool,
            replica=replica,
            router=router,
            counters=counters,
            store=store,
            leases=Leases(store, settings.database.request_timeout_s, lambda kind: metrics.leases.labels(kind).inc()),
            features=features,
            openapi=document,
            background=background,
        )
        start_loops(ctx)
        after_step("loops")

        await features.wait_warm(settings.features.warmup_wait_s)
        after_step("warm_up")
        yield ctx
