"""Prometheus metrics of the service (``GET /metrics``).

One registry per app, so that tests (and several apps in one process) do not share counts.
Label values are bounded: routes are route templates, never raw paths, and content types
beyond the first ``MAX_CONTENT_TYPES`` seen are counted as ``other``. Pool figures carry
``pool="primary"`` or ``pool="replica"`` (the latter only with a read replica).
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from psycopg_pool import AsyncConnectionPool

from cachesvc.cache.counters import Counters
from cachesvc.db.routing import ReadRouter

MAX_CONTENT_TYPES = 50
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PoolCollector:
    """Pool figures read at scrape time from psycopg_pool's own statistics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        yield from self._pools()
        batchers = self.metrics.batchers
        yield CounterMetricFamily("cachesvc_read_batches", "coalesced read transactions run",
                                  value=sum(b.batches for b in batchers))
        yield CounterMetricFamily("cachesvc_reads_coalesced", "read requests answered together with others",
                                  value=sum(b.coalesced for b in batchers))
        lookups = self.metrics.features.batchers.values() if self.metrics.features is not None else ()
        yield CounterMetricFamily("cachesvc_feature_batches", "coalesced feature lookup transactions run",
                                  value=sum(b.batches for b in lookups))
        yield CounterMetricFamily("cachesvc_feature_lookups_coalesced",
                                  "feature lookups answered together with others", value=sum(b.coalesced for b in lookups))
        l1 = self.metrics.features.l1 if self.metrics.features is not None else None
        if l1 is not None:
            for name, doc, value in (
                ("hits", "feature lookup keys answered from the service's memory", l1.hits),
                ("misses", "feature lookup keys read from the database with the L1 on", l1.misses),
                ("replaced", "feature lookup keys read again because a table was replaced since they were cached", l1.replaced),
            ):
                yield CounterMetricFamily(f"cachesvc_feature_l1_{name}", doc, value=value)
            yield GaugeMetricFamily("cachesvc_feature_l1_rows", "(table, key) feature rows in the service's memory", value=len(l1.rows))
            yield GaugeMetricFamily("cachesvc_feature_l1_bytes", "what those rows count for against CACHESVC_FEATURES_L1_MAX_MB",
                                    value=l1.bytes)
        yield from self._replica()
        if self.metrics.bouncer is not None:
            yield from self.metrics.bouncer.collect()
        features = self.metrics.features
        if features is not None:
            status = features.readiness.status()
            yield GaugeMetricFamily("cachesvc_features_warm", "1 when feature warm-up and its probe have passed",
                                    value=1 if status["ready"] else 0)
            yield GaugeMetricFamily("cachesvc_feature_tables", "feature tables served", value=status["tables"])
            yield CounterMetricFamily("cachesvc_feature_rewarms", "feature warm-ups after a PostgreSQL restart, finished",
                                      value=features.readiness.rewarms)
        counters = self.metrics.counters
        lag = time.monotonic() - counters.last_flush_monotonic if counters else 0
        yield GaugeMetricFamily("cachesvc_counter_flush_lag_seconds", "seconds since hit counters were last flushed", value=lag)
        yield GaugeMetricFamily("cachesvc_counters_pending", "hit/stat counters not yet flushed", value=counters.pending if counters else 0)
        yield CounterMetricFamily("cachesvc_counter_rows_rejected",
                                  "hit/stat counters dropped as bad data the database refuses",
                                  value=counters.rejected if counters else 0)

    def _pools(self):
        pools = self.metrics.pools
        stats = {name: pool.get_stats() for name, pool in pools.items()}

        def family(kind, name: str, doc: str, value) -> object:
            metric = kind(name, doc, labels=["pool"])
            for pool_name, pool in pools.items():
                metric.add_metric([pool_name], value(pool, stats[pool_name]))
            return metric

        for name, key, doc in (
            ("cachesvc_pool_size", "pool_size", "connections in the pool (open)"),
            ("cachesvc_pool_available", "pool_available", "idle connections ready for a request"),
            ("cachesvc_pool_waiting", "requests_waiting", "requests waiting for a connection"),
        ):
            yield family(GaugeMetricFamily, name, doc, lambda p, st, key=key: st.get(key, 0))
        yield family(GaugeMetricFamily, "cachesvc_pool_max", "configured pool size", lambda p, st: p.max_size)
        yield family(GaugeMetricFamily, "cachesvc_pool_in_use", "connections serving a request",
                     lambda p, st: max(st.get("pool_size", 0) - st.get("pool_available", 0), 0))
        # The pool's own cumulative counts (psycopg_pool keeps them; get_stats() does not reset them).
        for name, key, doc in (
            ("cachesvc_pool_connection_errors", "connections_errors", "failed attempts to open a connection"),
            ("cachesvc_pool_connections_lost", "connections_lost", "connections found broken on checkout"),
            ("cachesvc_pool_requests_errors", "requests_errors", "requests that got no connection in time"),
            ("cachesvc_pool_wait_seconds", "requests_wait_ms", "total time requests waited for a connection"),
        ):
            scale = 1000 if key.endswith("_ms") else 1
            yield family(CounterMetricFamily, name, doc, lambda p, st, key=key, scale=scale: st.get(key, 0) / scale)

    def _replica(self):
        router = self.metrics.router
        routes = CounterMetricFamily("cachesvc_read_routes", "reads by the server chosen and why", labels=["target", "reason"])
        fallbacks = CounterMetricFamily("cachesvc_replica_fallbacks", "replica reads run again on the primary, by failure",
                                        labels=["kind"])
        for (target, reason), count in (router.routes.items() if router else ()):
            routes.add_metric([target, reason], count)
        for kind, count in (router.fallbacks.items() if router else ()):
            fallbacks.add_metric([kind], count)
        yield routes
        yield fallbacks
        # Always declared (so that rules and dashboards can name them); samples only with a replica.
        monitor = router.monitor if router else None
        usable = GaugeMetricFamily("cachesvc_replica_usable", "1 when reads may go to the replica")
        lag = GaugeMetricFamily("cachesvc_replica_lag_seconds", "how far the replica was behind at the last check")
        lag_bytes = GaugeMetricFamily("cachesvc_replica_lag_bytes", "WAL the replica had yet to replay at the last check")
        staleness = GaugeMetricFamily("cachesvc_replica_staleness_seconds",
                                      "at most how far behind the replica is now (what routing compares with the bound)")
        checks = CounterMetricFamily("cachesvc_replica_checks", "replica lag checks run")
        if monitor is not None:
            seconds, behind = monitor.lag()
            stale = monitor.staleness()
            usable.add_metric([], int(monitor.usable()))
            checks.add_metric([], monitor.checks)
            if seconds is not None:
                lag.add_metric([], seconds)
                lag_bytes.add_metric([], behind)
            if stale is not None:
                staleness.add_metric([], stale)
        yield from (usable, lag, lag_bytes, staleness, checks)


LEASE_OUTCOMES = ("hit", "granted", "taken_over", "served", "wait", "released")


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pools: dict[str, AsyncConnectionPool] = {}
        self.counters: Counters | None = None
        self.batchers: list = []  # the store's ReadBatchers, when reads are coalesced
        self.router: ReadRouter | None = None
        self.features = None  # the FeatureService, once open
        self.bouncer = None  # PgBouncer's figures (cachesvc.db.bouncer), with a monitor DSN
        self.requests = Histogram(
            "cachesvc_request_duration_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.cache_lookups = Counter(
            "cachesvc_cache_lookups_total", "cache reads by result", ["content_type", "result"], registry=self.registry
        )
        self.semantic_lookups = Counter(
            "cachesvc_semantic_lookups_total",
            "similarity searches (POST /v1/cache/{contentType}/similar) by result: hit (an entry within maxDistance), miss",
            ["content_type", "result"], registry=self.registry,
        )
        self.semantic_unavailable = Counter(
            "cachesvc_semantic_unavailable_total",
            "semantic requests answered 501 semantic_unavailable (the database has no pgvector)", registry=self.registry,
        )
        self.db_errors = Counter(
            "cachesvc_db_errors_total", "database errors by kind", ["kind"], registry=self.registry
        )
        self.internal_errors = Counter(
            "cachesvc_internal_errors_total", "requests answered 500 internal_error (a bug: see the logs)",
            registry=self.registry,
        )
        self.leases = Counter(
            "cachesvc_leases_total",
            "lease requests by outcome: hit (the entry was there), granted, taken_over (granted after the holder's"
            " lease expired), served (waited for and got another caller's generation), wait (still held), released",
            ["outcome"], registry=self.registry,
        )
        for outcome in LEASE_OUTCOMES:
            self.leases.labels(outcome)
        self.rate_limited = Counter(
            "cachesvc_rate_limited_total", "requests refused with 429", registry=self.registry
        )
        self.retries = Counter(
            "cachesvc_db_retries_total", "database operations retried after a dropped connection", ["operation"],
            registry=self.registry,
        )
        self.flushes = Counter(
            "cachesvc_counter_flushes_total", "counter flushes by outcome", ["outcome"], registry=self.registry
        )
        self.ready = Gauge("cachesvc_ready", "1 when /readyz answers 200", registry=self.registry)
        self.registry.register(PoolCollector(self))
        self._content_types: set[str] = set()

    def watch(
        self, pool: AsyncConnectionPool, read_pool: AsyncConnectionPool | None, counters: Counters,
        batchers: Iterable, router: ReadRouter,
    ) -> None:
        """What the scrape-time collector reads."""
        self.pools = {"primary": pool} | ({"replica": read_pool} if read_pool is not None else {})
        self.counters, self.batchers, self.router = counters, list(batchers), router

    def content_type_label(self, content_type: str) -> str:
        if content_type in self._content_types:
            return content_type
        if len(self._content_types) < MAX_CONTENT_TYPES:
            self._content_types.add(content_type)
            return content_type
        return "other"

    def lookup(self, content_type: str, hit: bool) -> None:
        self.cache_lookups.labels(self.content_type_label(content_type), "hit" if hit else "miss").inc()

    def semantic_lookup(self, content_type: str, hit: bool) -> None:
        self.semantic_lookups.labels(self.content_type_label(content_type), "hit" if hit else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
