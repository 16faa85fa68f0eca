"""Hit counts and hourly access statistics, aggregated in memory and flushed in bulk.

A cache read never writes a row: it adds to these dictionaries, and a background task
flushes them every few seconds (and once more at shutdown) in one transaction of two
statements for all users, through ``record_cache_access`` and ``record_cache_hits`` (in
that order: the first takes each user's erasure lock before any row is touched). The
database adds what it is given, so several service processes can flush side by side and
their counts sum. Each statistic carries when its counting began, so that the database drops
counts of a user erased since (whichever process erased them).

A flush that fails for a connection's reason (unreachable, timed out, lock wait) puts its
counts back to be retried: nothing is lost short of the process dying between two flushes.
One that fails for a data reason would fail again forever, so its batch is split in halves
until the offending element stands alone and is dropped; elements the functions refuse are
dropped too. Both are counted in ``rejected``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import time
import uuid
from dataclasses import dataclass, field

import psycopg
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger("cachesvc.counters")

EntryKey = tuple[int, dt.datetime]  # the row's primary key: (id, created_at)
StatsKey = tuple[dt.datetime, uuid.UUID, str]  # (hour, user, content type)


@dataclass(slots=True)
class EntryHits:
    hits: int
    last_accessed_at: dt.datetime


@dataclass(slots=True)
class AccessStats:
    hits: int = 0
    misses: int = 0
    semantic_hits: int = 0  # similarity searches answered with an entry, apart from exact hits
    tokens_saved: int = 0
    cost_saved_usd: float = 0.0
    since: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))  # first count of this batch


Batch = tuple[dict[EntryKey, EntryHits], dict[StatsKey, AccessStats]]

# Errors that the same batch would meet again: bad data, not a lost connection or a timeout.
DATA_ERRORS = (psycopg.DataError, psycopg.IntegrityError)

RECORD_ACCESS = (
    "SELECT refused FROM record_cache_access(%s::timestamptz[], %s::uuid[], %s::text[], %s::bigint[],"
    " %s::bigint[], %s::bigint[], %s::numeric[], %s::timestamptz[], %s::bigint[])"
)
RECORD_HITS = "SELECT refused FROM record_cache_hits(%s::bigint[], %s::timestamptz[], %s::bigint[], %s::timestamptz[])"


class Counters:
    def __init__(self) -> None:
        self.entries: dict[EntryKey, EntryHits] = {}
        self.stats: dict[StatsKey, AccessStats] = {}
        self.last_flush_monotonic = time.monotonic()
        self.flushes = 0
        self.rejected = 0  # elements dropped as bad data, ever

    def hit(
        self, user_id: uuid.UUID, content_type: str, entry_key: EntryKey, tokens: int, cost: float,
        *, semantic: bool = False,
    ) -> EntryHits | None:
        """Count one hit (``semantic``: a similarity search's) on the entry; returns what was
        pending for the entry before it (or None)."""
        now = dt.datetime.now(dt.UTC)
        pending = self.entries.get(entry_key)
        before = EntryHits(pending.hits, pending.last_accessed_at) if pending else None
        if pending:
            pending.hits += 1
            pending.last_accessed_at = now
        else:
            self.entries[entry_key] = EntryHits(1, now)
        stats = self._stats(now, user_id, content_type)
        if semantic:
            stats.semantic_hits += 1
        else:
            stats.hits += 1
        stats.tokens_saved += tokens
        stats.cost_saved_usd += cost if math.isfinite(cost) else 0.0
        return before

    def miss(self, user_id: uuid.UUID, content_type: str) -> None:
        self._stats(dt.datetime.now(dt.UTC), user_id, content_type).misses += 1

    def _stats(self, now: dt.datetime, user_id: uuid.UUID, content_type: str) -> AccessStats:
        key = (now.replace(minute=0, second=0, microsecond=0), user_id, content_type)
        stats = self.stats.get(key)
        if stats is None:
            stats = self.stats[key] = AccessStats(since=now)
        return stats

    def forget(self, user_id: uuid.UUID) -> None:
        """Drop a user's pending statistics (right to erasure); their entries are gone anyway."""
        for key in [k for k in self.stats if k[1] == user_id]:
            del self.stats[key]

    @property
    def pending(self) -> int:
        return len(self.entries) + len(self.stats)

    def take(self) -> tuple[dict[EntryKey, EntryHits], dict[StatsKey, AccessStats]]:
        entries, stats = self.entries, self.stats
        self.entries, self.stats = {}, {}
        return entries, stats

    def put_back(self, entries: dict[EntryKey, EntryHits], stats: dict[StatsKey, AccessStats]) -> None:
        for key, e in entries.items():
            mine = self.entries.get(key)
            if mine:
                mine.hits += e.hits
                mine.last_accessed_at = max(mine.last_accessed_at, e.last_accessed_at)
            else:
                self.entries[key] = e
        for key, s in stats.items():
            mine = self.stats.get(key)
            if mine:
                mine.hits += s.hits
                mine.misses += s.misses
                mine.semantic_hits += s.semantic_hits
                mine.tokens_saved += s.tokens_saved
                mine.cost_saved_usd += s.cost_saved_usd
                mine.since = min(mine.since, s.since)
            else:
                self.stats[key] = s

    async def flush(self, pool: AsyncConnectionPool) -> int:
        """Write everything pending; returns how many keys it wrote or dropped.

        Normally one transaction. A batch refused for a data reason is split and sent again
        until only the offending elements are left out; on any other error, what was not
        written is put back and the error raised.
        """
        entries, stats = self.take()
        if not entries and not stats:
            self.last_flush_monotonic = time.monotonic()
            return 0
        batches: list[Batch] = [(entries, stats)]
        while batches:
            batch = batches.pop()
            try:
                self.rejected += await _send(pool, *batch)
            except DATA_ERRORS as exc:
                if _size(batch) == 1:
                    self.rejected += 1
                    log.warning("counter element dropped, the database refuses it: %s", exc)
                else:
                    batches += _halves(batch)
            except BaseException:
                for unsent in (batch, *batches):
                    self.put_back(*unsent)
                raise
        self.flushes += 1
        self.last_flush_monotonic = time.monotonic()
        return len(entries) + len(stats)

    async def run(self, pool: AsyncConnectionPool, interval: float, metrics=None) -> None:
        """The background flusher: every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(pool)
                outcome = "ok"
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # kept for the next round; the service goes on
                outcome = "failed"
                log.warning("counter flush failed, will retry: %s", exc)
            if metrics is not None:
                metrics.flushes.labels(outcome).inc()


async def _send(pool: AsyncConnectionPool, entries: dict[EntryKey, EntryHits], stats: dict[StatsKey, AccessStats]) -> int:
    """One transaction: statistics first (they take the users' erasure locks), then hits.
    Returns how many elements the functions refused."""
    refused = 0
    async with pool.connection() as conn:
        async with conn.transaction():
            if stats:
                keys = sorted(stats, key=lambda k: (k[1], k[0], k[2]))
                values = [stats[k] for k in keys]
                cur = await conn.execute(RECORD_ACCESS, (
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [k[2] for k in keys],
                    [v.hits for v in values],
                    [v.misses for v in values],
                    [v.tokens_saved for v in values],
                    [round(v.cost_saved_usd, 6) for v in values],
                    [v.since for v in values],
                    [v.semantic_hits for v in values],
                ))
                refused += (await cur.fetchone())[0]
            if entries:
                keys = list(entries)
                cur = await conn.execute(RECORD_HITS, (
                    [k[0] for k in keys],
                    [k[1] for k in keys],
                    [entries[k].hits for k in keys],
                    [entries[k].last_accessed_at for k in keys],
                ))
                refused += (await cur.fetchone())[0]
    return refused


def _size(batch: Batch) -> int:
    return len(batch[0]) + len(batch[1])


def _halves(batch: Batch) -> list[Batch]:
    """Hits and statistics apart first, then each in halves."""
    entries, stats = batch
    if entries and stats:
        return [(entries, {}), ({}, stats)]
    items = list((entries or stats).items())
    first, second = dict(items[: len(items) // 2]), dict(items[len(items) // 2:])
    return [(first, {}), (second, {})] if entries else [({}, first), ({}, second)]
