"""The Starlette application: routes, lifecycle (pools, replica monitor, counters flusher), health."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import time

from prometheus_client import CONTENT_TYPE_LATEST

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachesvc import auth, migrations
from cachesvc.api import cache, errors, openapi
from cachesvc.api import features as feature_routes
from cachesvc.cache.counters import Counters
from cachesvc.cache.store import CacheStore
from cachesvc.metrics import Metrics
from cachesvc.ratelimit import RateLimiter
from cachesvc.features.catalog import CatalogError
from cachesvc.logs import AccessLog
from cachesvc.features.service import FeatureService
from cachesvc.db.pools import create_check_pools, create_pool, create_read_pool, open_pool
from cachesvc.db.replica import ReplicaMonitor
from cachesvc.db.routing import ReadRouter
from cachesvc.db.transaction import Budget, start_budget
from cachesvc.settings import Settings

log = logging.getLogger("cachesvc.api")


def endpoint(handler, route: str):
    """Request id in and out, every failure turned into a typed error body, metrics, access log."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        start_budget(request.app.state.settings.request_timeout_s)  # all of its database work
        rid = errors.assign_request_id(request)
        metrics: Metrics = request.app.state.metrics
        try:
            response = await handler(request)
        except errors.ApiError as exc:
            response = await errors.on_api_error(request, exc)
        except errors.UNAVAILABLE as exc:
            metrics.db_errors.labels(type(exc).__name__).inc()
            response = await errors.on_database_unavailable(request, exc)
        except Exception as exc:
            metrics.db_errors.labels("unexpected").inc()
            response = await errors.on_unexpected(request, exc)
        response.headers["x-request-id"] = rid
        elapsed = time.perf_counter() - started
        metrics.requests.labels(route, request.method, str(response.status_code)).observe(elapsed)
        access = request.app.state.access_log
        if access is not None:
            user = getattr(request.state, "user_id", None)
            access.write({
                "requestId": rid, "method": request.method, "route": route, "status": response.status_code,
                "ms": round(elapsed * 1000, 3),
                # A stable pseudonym: logs can follow a user without naming them.
                "user": hashlib.sha256(user.bytes).hexdigest()[:16] if user else None,
            })
        return response

    return wrapped


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


SCHEMA_REVISION = "SELECT version_num FROM alembic_version"
READY_BUDGET_S = 2.0  # a load balancer's probe must not wait as long as a request may


async def readyz(request: Request) -> Response:
    state = request.app.state
    checks = {"pool": False, "schema": False}
    found = None  # the revision the database is at, when it could be read
    try:
        (rows,) = await state.store.transactions.run(
            state.pool, [(SCHEMA_REVISION, None)], read_only=True, retry=False, budget=Budget(READY_BUDGET_S)
        )
        checks["pool"] = True
        found = rows[0][0] if rows else None
        checks["schema"] = found == state.expected_revision
    except Exception as exc:  # readiness reports, it never raises
        log.warning("readiness check failed: %s", exc)
    features = state.features.readiness.status()  # warm-up and its probe (cachesvc.features.readiness)
    ready = all(checks.values()) and features["ready"]
    state.metrics.ready.set(1 if ready else 0)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks, "expectedRevision": state.expected_revision,
         "revision": found, "features": features, "replica": replica_status(state), "pools": pool_status(state)},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "2"},
    )


def replica_status(state) -> dict:
    """Reported, never a reason to be unready: reads fall back to the primary."""
    if state.replica is None:
        return {"configured": False}
    return state.replica.status() | {"featuresWarm": state.features.replica_warm()}


def pool_status(state) -> dict:
    pools = {"primary": state.pool, "replica": state.read_pool}
    return {
        name: {"size": stats.get("pool_size", 0), "available": stats.get("pool_available", 0),
               "waiting": stats.get("requests_waiting", 0), "max": pool.max_size}
        for name, pool in pools.items() if pool is not None
        for stats in [pool.get_stats()]
    }


async def openapi_document(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


async def metrics_endpoint(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def route(path: str, *, template: str | None = None, **handlers) -> Route:
    """One route per path with all its methods (``GET=...``), so that a 405's Allow names them all."""

    async def by_method(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    by_method.__name__ = "_".join(h.__name__ for h in handlers.values())
    return Route(path, endpoint(by_method, template or path), methods=list(handlers))


ENTRY = "/v1/cache/{contentType}/{key}"
ROUTES = [
    route("/healthz", GET=healthz),
    route("/readyz", GET=readyz),
    route("/metrics", GET=metrics_endpoint),
    route("/openapi.json", GET=openapi_document),
    route("/v1/cache/stats", GET=cache.stats),
    route("/v1/cache/lookup", POST=cache.lookup),
    route("/v1/cache", DELETE=cache.erase),
    route("/v1/cache/{content_type}/{key:path}", template=ENTRY,
          GET=cache.get_entry, PUT=cache.put_entry, DELETE=cache.delete_entry),
    route("/v1/features/_stats", GET=feature_routes.table_stats),
    route("/v1/features/lookup", POST=feature_routes.lookup),
    route("/v1/features/{entityKey}", GET=feature_routes.get_features),
]


async def start_replica(state) -> asyncio.Task | None:
    """Open the replica's pool without waiting for it (the service starts while it is down),
    check it once so that reads may go there from the first request, then keep checking."""
    if state.replica is None:
        return None
    for pool in (state.read_pool, *state.check_pools):
        await pool.open(wait=False)
    await state.replica.check()
    return asyncio.create_task(state.replica.run(), name="replica-monitor")


async def stop_replica(state, monitor: asyncio.Task | None) -> None:
    if monitor is None:
        return
    monitor.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await monitor
    for pool in (state.read_pool, *state.check_pools):
        await pool.close()


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    settings.require_jwt_secret()  # refuse to start rather than accept no (or any) token

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state = app.state
        state.settings = settings
        state.expected_revision = migrations.head_revision()
        state.access_log = AccessLog(settings.log_format) if settings.access_log else None
        state.metrics = Metrics()
        state.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst)
        state.tokens = auth.VerifiedTokens(settings.jwt_secret, settings.jwt_audience)
        state.pool = create_pool(settings)
        state.read_pool = create_read_pool(settings)
        state.check_pools = create_check_pools(settings)
        state.replica = ReplicaMonitor(*state.check_pools, state.read_pool, settings) if state.check_pools else None
        state.router = ReadRouter(state.replica, settings)
        state.counters = Counters()
        state.store = CacheStore(
            state.pool, settings, state.counters, on_retry=lambda: state.metrics.retries.labels("cache").inc(),
            read_pool=state.read_pool, router=state.router,
        )
        state.metrics.watch(state.pool, state.read_pool, state.counters, state.store.batchers.values(), state.router)
        await open_pool(state.pool, settings)
        monitor = await start_replica(state)
        try:
            state.features = state.metrics.features = await FeatureService.open(
                state.pool, settings, state.router, state.read_pool,
                on_retry=lambda: state.metrics.retries.labels("features").inc(),
            )
        except CatalogError as exc:
            log.error("refusing to start: %s", exc)
            await stop_replica(state, monitor)
            await state.pool.close()
            raise
        state.openapi = openapi.document_bytes(settings, list(state.features.catalog.tables))
        flusher = asyncio.create_task(state.counters.run(state.pool, settings.flush_interval_s, state.metrics))
        log.info("ready to serve", extra={"fields": {"pool": settings.pool_size, "replica": state.replica is not None}})
        try:
            yield
        finally:
            # The server has stopped accepting and let in-flight requests finish; what is
            # left: feature state, the last counters (to the primary), then the pools.
            await state.features.close()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                flushed = await state.counters.flush(state.pool)
                log.info("final counter flush", extra={"fields": {"keys": flushed}})
            except Exception as exc:
                log.error("final counter flush failed; %d counters lost: %s", state.counters.pending, exc)
            await stop_replica(state, monitor)
            await state.pool.close()
            if state.access_log is not None:
                state.access_log.flush()

    async def not_found(request: Request, exc) -> Response:
        rid = errors.assign_request_id(request)
        response = await errors.on_http_exception(request, exc)
        response.headers["x-request-id"] = rid
        return response

    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.router.redirect_slashes = False  # a key ".." normalised away must find no route, never a redirect
    return app
