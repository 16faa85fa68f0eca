"""Prometheus metrics of the service (``GET /metrics``).

One registry per app, so that tests (and several apps in one process) do not share counts.
Label values are bounded: routes are route templates, never raw paths, and content types
beyond the first ``MAX_CONTENT_TYPES`` seen are counted as ``other``.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from psycopg_pool import AsyncConnectionPool

from cachesvc.cache.counters import Counters

MAX_CONTENT_TYPES = 50
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class PoolCollector:
    """Pool figures read at scrape time from psycopg_pool's own statistics."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self):
        pool: AsyncConnectionPool | None = self.metrics.pool
        stats = pool.get_stats() if pool is not None else {}
        for name, key, doc in (
            ("cachesvc_pool_size", "pool_size", "connections in the pool (open)"),
            ("cachesvc_pool_available", "pool_available", "idle connections ready for a request"),
            ("cachesvc_pool_waiting", "requests_waiting", "requests waiting for a connection"),
        ):
            yield GaugeMetricFamily(name, doc, value=stats.get(key, 0))
        yield GaugeMetricFamily("cachesvc_pool_max", "configured pool size", value=pool.max_size if pool else 0)
        in_use = stats.get("pool_size", 0) - stats.get("pool_available", 0)
        yield GaugeMetricFamily("cachesvc_pool_in_use", "connections serving a request", value=max(in_use, 0))
        # The pool's own cumulative counts (psycopg_pool keeps them; get_stats() does not reset them).
        for name, key, doc in (
            ("cachesvc_pool_connection_errors", "connections_errors", "failed attempts to open a connection"),
            ("cachesvc_pool_connections_lost", "connections_lost", "connections found broken on checkout"),
            ("cachesvc_pool_requests_errors", "requests_errors", "requests that got no connection in time"),
            ("cachesvc_pool_wait_seconds", "requests_wait_ms", "total time requests waited for a connection"),
        ):
            value = stats.get(key, 0)
            yield CounterMetricFamily(name, doc, value=value / 1000 if key.endswith("_ms") else value)
        features = self.metrics.features
        if features is not None:
            status = features.readiness.status()
            yield GaugeMetricFamily("cachesvc_features_warm", "1 when feature warm-up and its probe have passed",
                                    value=1 if status["ready"] else 0)
            yield GaugeMetricFamily("cachesvc_feature_tables", "feature tables served", value=status["tables"])
        batcher = self.metrics.batcher
        yield CounterMetricFamily("cachesvc_read_batches", "coalesced read transactions run",
                                  value=batcher.batches if batcher else 0)
        yield CounterMetricFamily("cachesvc_reads_coalesced", "read requests answered together with others",
                                  value=batcher.coalesced if batcher else 0)
        counters = self.metrics.counters
        lag = time.monotonic() - counters.last_flush_monotonic if counters else 0
        yield GaugeMetricFamily("cachesvc_counter_flush_lag_seconds", "seconds since hit counters were last flushed", value=lag)
        yield GaugeMetricFamily("cachesvc_counters_pending", "hit/stat counters not yet flushed", value=counters.pending if counters else 0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pool: AsyncConnectionPool | None = None
        self.counters: Counters | None = None
        self.batcher = None  # the store's ReadBatcher, when reads are coalesced
        self.features = None  # the FeatureService, once open
        self.requests = Histogram(
            "cachesvc_request_duration_seconds", "HTTP request latency", ["route", "method", "status"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.cache_lookups = Counter(
            "cachesvc_cache_lookups_total", "cache reads by result", ["content_type", "result"], registry=self.registry
        )
        self.db_errors = Counter(
            "cachesvc_db_errors_total", "database errors by kind", ["kind"], registry=self.registry
        )
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

    def content_type_label(self, content_type: str) -> str:
        if content_type in self._content_types:
            return content_type
        if len(self._content_types) < MAX_CONTENT_TYPES:
            self._content_types.add(content_type)
            return content_type
        return "other"

    def lookup(self, content_type: str, hit: bool) -> None:
        self.cache_lookups.labels(self.content_type_label(content_type), "hit" if hit else "miss").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
