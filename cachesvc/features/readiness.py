"""The feature read path's readiness gate: warm-up done, then a probe that passes.

After warm-up the gate probes, once a second until it passes, with keys warm-up did not
look up: the buffer hit ratio of one lookup over every table (from the transaction's own
block counters, so other sessions and earlier traffic do not blur it) must reach
``features_ready_hit_ratio``, and another lookup must take at most
``features_ready_latency_ms``. Once passed, the gate stays open: a busy moment later must
not take every replica out of the load balancer at once.

After a PostgreSQL restart while the service runs, the tables are warmed up again
(``watch_restarts``): every transaction reads the server's start time along with its settings
(cachesvc.db.transaction), and every ``features_restart_check_s`` the service looks at the
latest one seen on the pool; when it is not the one the last warm-up was for, warm-up runs
again in the background, beside live lookups (half the pool's connections). It asks the
server nothing of its own: a question while the server is down would make PgBouncer fail a
login, and PgBouncer then turns clients away until its next login succeeds, even once the
server is back. The gate stays open through it: a restarted database is every replica's at
once, and answering 503 from all of them would turn a slow first second into an outage. What
the re-warm buys is measured in docs/performance.md: the first transaction after the restart
(a request, or a load balancer's /readyz probe) still meets a new server connection and
empty buffers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from cachesvc.db.transaction import server_started_at
from cachesvc.features import warmup
from cachesvc.features.reader import FeatureReader
from cachesvc.settings import FeatureSettings

log = logging.getLogger("cachesvc.features")

PROBE_KEYS = 10
PROBE_INTERVAL_S = 1.0

# Blocks of the feature tables and their indexes that this backend fetched and found in
# shared buffers, not yet flushed to the cumulative statistics: a delta within one
# transaction is exactly that transaction's I/O.
BLOCK_COUNTERS = """
SELECT coalesce(sum(pg_stat_get_xact_blocks_fetched(r)), 0)::bigint,
       coalesce(sum(pg_stat_get_xact_blocks_hit(r)), 0)::bigint
  FROM (SELECT c.oid AS r FROM pg_class c WHERE c.oid = ANY(%(rels)s::regclass[])
        UNION ALL
        SELECT i.indexrelid FROM pg_index i WHERE i.indrelid = ANY(%(rels)s::regclass[])) AS s
"""


@dataclass(frozen=True, slots=True)
class Probe:
    hit_ratio: float
    latency_ms: float
    min_hit_ratio: float
    max_latency_ms: float

    @property
    def passed(self) -> bool:
        ratio_ok = self.min_hit_ratio <= 0 or self.hit_ratio >= self.min_hit_ratio
        latency_ok = self.max_latency_ms <= 0 or self.latency_ms <= self.max_latency_ms
        return ratio_ok and latency_ok

    def as_dict(self) -> dict:
        return {
            "hitRatio": round(self.hit_ratio, 4),
            "minHitRatio": self.min_hit_ratio,
            "latencyMs": round(self.latency_ms, 3),
            "maxLatencyMs": self.max_latency_ms,
            "passed": self.passed,
        }


async def hit_ratio(reader: FeatureReader, keys: list[str]) -> float:
    """Share of the blocks one lookup of ``keys`` over every table found in shared buffers."""
    counters = (BLOCK_COUNTERS, {"rels": reader.catalog.relation_names()})
    plan = reader.plan(keys, list(reader.catalog.tables.values()))
    results = await reader.transactions.run(reader.pool, [counters, *plan.statements, counters], read_only=True)
    plan.collect(results[1:-1])
    (fetched0, hit0), (fetched1, hit1) = results[0][0], results[-1][0]
    fetched, hit = fetched1 - fetched0, hit1 - hit0
    return hit / fetched if fetched else 1.0


async def probe(reader: FeatureReader, keys: list[str], settings: FeatureSettings, rng: random.Random) -> Probe:
    ratio = await hit_ratio(reader, rng.sample(keys, min(PROBE_KEYS, len(keys))))
    timed = rng.sample(keys, min(PROBE_KEYS, len(keys)))
    start = time.perf_counter()
    await reader.lookup(timed)
    latency_ms = (time.perf_counter() - start) * 1000
    return Probe(ratio, latency_ms, settings.ready_hit_ratio, settings.ready_latency_ms)


class Readiness:
    """Runs warm-up (retrying on database errors) and the probes; /readyz reads ``status``."""

    def __init__(self, reader: FeatureReader, settings: FeatureSettings) -> None:
        self.reader = reader
        self.settings = settings
        self.enabled = settings.warmup
        self.state = "pending" if self.enabled else "disabled"
        self.report: warmup.WarmupReport | None = None
        self.last_probe: Probe | None = None
        self.error: str | None = None
        self.warmed_for = None  # the server start time the last finished warm-up was for
        self.rewarms = 0  # warm-ups after a restart, finished
        self.rewarm: warmup.WarmupReport | None = None  # the last of them
        self.rewarming = False
        self.ready = asyncio.Event()
        if not self.enabled:
            self.ready.set()

    @property
    def is_ready(self) -> bool:
        return self.ready.is_set()

    def status(self) -> dict:
        body = {"enabled": self.enabled, "state": self.state, "ready": self.is_ready, "tables": len(self.reader.catalog.tables)}
        if self.report is not None:
            body["warmup"] = self.report.as_dict()
        if self.last_probe is not None:
            body["probe"] = self.last_probe.as_dict()
        if self.error:
            body["error"] = self.error
        if self.enabled:
            body["restart"] = {
                "rewarms": self.rewarms, "rewarming": self.rewarming,
                "serverStartedAt": self.warmed_for.isoformat() if self.warmed_for else None,
            } | ({"last": self.rewarm.as_dict()} if self.rewarm is not None else {})
        return body

    async def run(self) -> None:
        if not self.enabled:
            return
        samples = await self._warm_up()
        if not self.reader.catalog.tables:
            self._open()
            return
        self.state = "probing"
        rng = random.Random()
        keys = samples.probe or samples.warm
        last_warning = 0.0
        while True:
            try:
                self.last_probe = await probe(self.reader, keys, self.settings, rng) if keys else None
                self.error = None
            except Exception as exc:
                self.error = f"probe failed: {exc}"
            else:
                if self.last_probe is None or self.last_probe.passed:
                    self._open()
                    return
            if time.monotonic() - last_warning > 30:
                last_warning = time.monotonic()
                log.warning("features not ready yet", extra={"fields": self.status()})
            await asyncio.sleep(PROBE_INTERVAL_S)

    async def _warm_up(self) -> warmup.Samples:
        delay = 0.5
        while True:
            self.state = "warming"
            try:
                samples = await warmup.sample_keys(self.reader)
                self.report = await warmup.warm_up_as_set(self.reader, self.settings, concurrency=self.reader.pool.max_size,
                                                          samples=samples)
                self.warmed_for = self.report.server_started_at
                self.error = None
                return samples
            except Exception as exc:
                self.state = "retrying"
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("feature warm-up failed, retrying in %.1fs: %s", delay, self.error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def watches_restarts(self) -> bool:
        return self.enabled and self.settings.restart_check_s > 0

    async def watch_restarts(self) -> None:
        """Once ready, warm up again whenever a transaction has seen a server start that the
        last warm-up was not for (it asks nothing of the server itself: cachesvc.db.transaction)."""
        interval = self.settings.restart_check_s
        await self.ready.wait()
        while True:
            await asyncio.sleep(interval)
            started = server_started_at(self.reader.pool)
            if started is not None and started != self.warmed_for:
                await self._rewarm(started)

    async def _rewarm(self, started) -> None:
        log.info("PostgreSQL restarted; warming the feature tables up again",
                 extra={"fields": {"serverStartedAt": started.isoformat()}})
        self.rewarming = True
        try:
            report = await warmup.warm_up_as_set(  # live lookups keep half the pool
                self.reader, self.settings, concurrency=max(1, self.reader.pool.max_size // 2))
        except Exception as exc:  # the next check tries again
            log.warning("feature warm-up after a restart failed: %s", exc)
            return
        finally:
            self.rewarming = False
        self.rewarm, self.warmed_for = report, report.server_started_at
        self.rewarms += 1
        log.info("feature tables warm again after a restart", extra={"fields": report.as_dict()})

    def _open(self) -> None:
        self.state = "done"
        self.ready.set()
        log.info("features ready", extra={"fields": self.status()})
