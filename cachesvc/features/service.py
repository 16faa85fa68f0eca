"""The feature read path inside the service: catalog, reader, hot keys, warm-up.

``discover`` builds it and starts nothing; its loops (warm-up and readiness, the hot keys
flush, the replica's warm-up) are run by the service's one owner of background loops, and
its final hot keys flush is called at shutdown (both in cachesvc.api.context).

With a read replica, lookups go there (cachesvc.db.routing) once the replica's buffers are warm:
each time the replica's server (re)starts, its tables are warmed up the way the primary's are
before ``/readyz`` turns ready, while lookups stay on the primary. The primary's warm-up and
readiness gate do not depend on the replica.

Coalesced lookups (``CACHESVC_FEATURES_READ_LANES`` > 0, the default): the lookups of
concurrent requests that ask for the same set of tables share one transaction and one
statement, through the batcher the cache's reads use (cachesvc.db.batcher). A lookup's
items are its (key, tables) pairs; a batch concatenates the keys of its lookups into the one
``unnest … WITH ORDINALITY`` of the reader's statement (the reader handles duplicate keys and
keys of several types as it does for one request), and hands each lookup the rows of its own
positions, its tables in its own order. Lookups of other table sets wait for the next lane.
At most ``BATCH_MAX_KEYS`` keys go in one batch (a single lookup's ``MAX_KEYS`` always fit).

The batch runs where the router chose (one batcher per server; a replica that fails hands
the lookups still waiting for it to the primary's batcher), under a budget of its own; each
request waits for it only as long as its own budget allows, so a caller past its budget, or
cancelled, gets its answer (503, or its cancellation) while the batch goes on for the others.
A failed batch is the failure of each of its lookups, mapped to the same answer as before.
The statement reads each table under READ COMMITTED with a snapshot taken after its locks
(reader.py), so a table swapped by ``features load`` is still seen whole by every lookup of
the batch, old or new.

With the L1 on (``CACHESVC_FEATURES_L1_MAX_AGE_MS`` > 0; cachesvc.features.l1), every
transaction reads the tables' file nodes first, and a lookup whose keys are all in memory
still asks for them: a batch item with no key, which shares a batch like any other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence

from psycopg_pool import AsyncConnectionPool

from cachesvc.db.batcher import ReadBatcher
from cachesvc.features import catalog as feature_catalog
from cachesvc.features import warmup
from cachesvc.features.catalog import FeatureTable
from cachesvc.features.hotkeys import HotKeys
from cachesvc.features.l1 import L1, Files
from cachesvc.features.readiness import Readiness
from cachesvc.db.routing import ReadRouter, Reads, Target
from cachesvc.db.transaction import Budget, Transactions, within_budget
from cachesvc.features.reader import CONTEXT, MAX_KEYS, FeatureReader, Features, Plan
from cachesvc.settings import FeatureSettings, ReplicaSettings

log = logging.getLogger("cachesvc.features")

# Keys of one coalesced batch, across its lookups (a lookup bigger than that goes alone).
# Measured over 30 tables x 100k rows: a statement costs ~1.3 ms of its own plus ~0.3 ms per
# key (1 key 1.6 ms, 32 keys 13 ms, 100 keys 34 ms, 200 keys 67 ms). At 100 keys the shared
# part is already under 5 % of the batch: a bigger batch saves almost nothing more and makes
# every lookup in it wait for all its keys. So one full lookup's worth.
BATCH_MAX_KEYS = MAX_KEYS

Item = tuple[str, Sequence[FeatureTable]]  # a key of a lookup, and the lookup's tables


def _shape(items: Sequence[Item]) -> frozenset[str]:
    """What a lookup's statement depends on besides its keys: the set of its tables."""
    return frozenset(t.name for t in items[0][1])


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
        self.l1 = L1(settings.l1_max_age_ms / 1000, int(settings.l1_max_mb * 2**20)) if settings.l1_max_age_ms > 0 else None
        self.batchers = {
            t: ReadBatcher(functools.partial(self._lookup_batch, t), settings.read_lanes, BATCH_MAX_KEYS, shape_of=_shape)
            for t in Target
        } if settings.read_lanes > 0 else {}
        if self.router.monitor is not None and self.batchers:
            # A failed replica hands the lookups still waiting for it to the primary at once.
            self.router.monitor.on_unusable.append(self._divert_replica_lookups)

    async def lookup(self, keys: list[str], tables: list[FeatureTable]) -> list[Features]:
        """Features of ``keys``: on the replica when it is usable and warm, else on the primary;
        with the L1 on, from memory where it is current (cachesvc.features.l1)."""
        target = self.router.choose(warm=self.replica_warm())
        if self.l1 is None:
            return (await self._fetch(target, keys, tables))[0]
        return await self.l1.lookup(keys, tables, functools.partial(self._fetch, target, tables=tables))

    async def _fetch(self, target: Target, keys: list[str], tables: list[FeatureTable]) -> tuple[list[Features], Files | None]:
        """The features of ``keys`` read from the database, and with the L1 on, the tables' file
        nodes, read first in the same transaction (None without it; no keys: only those)."""
        if self.batchers:
            answers = await within_budget(self.batchers[target].fetch([(key, tables) for key in keys] or [(None, tables)]))
            found = [features for features, _ in answers if features is not None]
            names = [t.name for t in tables]
            if found and list(found[0]) != names:  # the batch's first lookup named them in another order
                found = [{name: features[name] for name in names} for features in found]
            return found, answers[0][1]
        plan = self.reader.plan(keys, tables)
        results, nodes = await self._run(target, plan, tables)
        return plan.collect(results), nodes

    async def _lookup_batch(self, target: Target, items: list[Item]) -> list[tuple[Features | None, Files | None]]:
        """One transaction for the lookups of a batch, all of one set of tables: the features of
        each item (None for an item that asks for the file nodes only) and the file nodes. The
        batch has a budget of its own (its task outlives the request that started it); each
        request waits for it only as long as its own budget allows."""
        tables = items[0][1]
        plan = self.reader.plan([key for key, _ in items if key is not None], tables)
        results, nodes = await self._run(target, plan, tables, Budget(self.reads.transactions.request_timeout_s))
        found = iter(plan.collect(results))
        return [(None if key is None else next(found), nodes) for key, _ in items]

    async def _run(self, target: Target, plan: Plan, tables: Sequence[FeatureTable],
                   budget: Budget | None = None) -> tuple[list[list[tuple]], Files | None]:
        """The rows of ``plan``'s statements, in one transaction; with the L1 on, after the
        tables' file nodes. No statement to send (no key can be in any table): no transaction."""
        statements = [(self.l1.statement(tables), None), *plan.statements] if self.l1 else plan.statements
        if not statements:
            return [], None
        results = await self.reads.run(target, statements, context=CONTEXT, budget=budget)
        if self.l1 is None:
            return results, None
        return results[1:], self.l1.files_of(tables, results[0][0])

    def _divert_replica_lookups(self) -> None:
        moved = self.batchers[Target.REPLICA].divert_to(self.batchers[Target.PRIMARY])
        self.router.routes[(Target.PRIMARY.value, "replica_failed_while_waiting")] += moved

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
                report = await warmup.warm_up_as_set(self.replica_reader, self.settings,
                                                     concurrency=self.replica_reader.pool.max_size)
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
