"""Hot entity keys: counted in memory on every lookup, flushed to feature_hot_keys in bulk.

A lookup never writes a row. Counts are added here and a background task sends them every
few seconds (and at shutdown) through ``record_feature_hot_keys``, so that warm-up after a
restart can start with the keys that traffic asked for most. Memory is bounded: once
``MAX_PENDING`` distinct keys wait for a flush, new keys are not counted until it happens.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable

from psycopg_pool import AsyncConnectionPool

from cachesvc.keys import MAX_LENGTH as MAX_KEY_LENGTH

log = logging.getLogger("cachesvc.features")

MAX_PENDING = 10_000  # also the most keys record_feature_hot_keys() accepts in one call

RECORD = "SELECT record_feature_hot_keys(%s::text[], %s::bigint[])"
TOP = """
SELECT entity_key FROM feature_hot_keys
 WHERE last_seen_at > now() - interval '7 days'
 ORDER BY hits DESC, last_seen_at DESC
 LIMIT %s
"""


class HotKeys:
    def __init__(self) -> None:
        self.pending: Counter[str] = Counter()
        self.dropped = 0

    def record(self, keys: Iterable[str]) -> None:
        for key in keys:
            if key in self.pending or len(self.pending) < MAX_PENDING:
                self.pending[key] += 1
            else:
                self.dropped += 1

    async def flush(self, pool: AsyncConnectionPool) -> int:
        if not self.pending:
            return 0
        batch, self.pending = self.pending, Counter()
        keys = [k for k in batch if 1 <= len(k) <= MAX_KEY_LENGTH]
        try:
            async with pool.connection() as conn:
                await conn.execute(RECORD, (keys, [batch[k] for k in keys]))
        except BaseException:
            for key, hits in batch.items():  # retried with the next flush
                if key in self.pending or len(self.pending) < MAX_PENDING:
                    self.pending[key] += hits
            raise
        return len(keys)

    async def run(self, pool: AsyncConnectionPool, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush(pool)
            except Exception as exc:
                log.warning("hot keys flush failed, retrying later: %s", exc)


async def top(pool: AsyncConnectionPool, limit: int) -> list[str]:
    """The recorded hot keys, most used first."""
    if limit <= 0:
        return []
    async with pool.connection() as conn:
        cur = await conn.execute(TOP, (limit,))
        return [row[0] for row in await cur.fetchall()]
