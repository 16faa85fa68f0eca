"""The Starlette application: routes, the request wrapper, health; its lifecycle is context.py."""

from __future__ import annotations

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

from cachesvc.api import cache, errors
from cachesvc.api import features as feature_routes
from cachesvc.api.context import AppContext, context, open_context
from cachesvc.db.transaction import Budget, start_budget
from cachesvc.settings import Settings

log = logging.getLogger("cachesvc.api")


def endpoint(handler, route: str):
    """Request id in and out, every failure turned into a typed error body, metrics, access log."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        started = time.perf_counter()
        ctx = context(request)
        start_budget(ctx.settings.database.request_timeout_s)  # all of its database work
        rid = errors.assign_request_id(request)
        try:
            response = await handler(request)
        except Exception as exc:
            response = await errors.response_for(request, exc, ctx.metrics)
        response.headers["x-request-id"] = rid
        elapsed = time.perf_counter() - started
        ctx.metrics.requests.labels(route, request.method, str(response.status_code)).observe(elapsed)
        access = ctx.access_log
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
    ctx = context(request)
    checks = {"pool": False, "schema": False}
    found = None  # the revision the database is at, when it could be read
    try:
        (rows,) = await ctx.store.transactions.run(
            ctx.pool, [(SCHEMA_REVISION, None)], read_only=True, retry=False, budget=Budget(READY_BUDGET_S)
        )
        checks["pool"] = True
        found = rows[0][0] if rows else None
        checks["schema"] = found == ctx.expected_revision
    except Exception as exc:  # readiness reports, it never raises
        log.warning("readiness check failed: %s", exc)
    features = ctx.features.readiness.status()  # warm-up and its probe (cachesvc.features.readiness)
    ready = all(checks.values()) and features["ready"]
    ctx.metrics.ready.set(1 if ready else 0)
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks, "expectedRevision": ctx.expected_revision,
         "revision": found, "features": features, "replica": replica_status(ctx), "pools": pool_status(ctx)},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "2"},
    )


def replica_status(ctx: AppContext) -> dict:
    """Reported, never a reason to be unready: reads fall back to the primary."""
    if ctx.replica is None:
        return {"configured": False}
    return ctx.replica.status() | {"featuresWarm": ctx.features.replica_warm()}


def pool_status(ctx: AppContext) -> dict:
    pools = {"primary": ctx.pool, "replica": ctx.read_pool}
    return {
        name: {"size": stats.get("pool_size", 0), "available": stats.get("pool_available", 0),
               "waiting": stats.get("requests_waiting", 0), "max": pool.max_size}
        for name, pool in pools.items() if pool is not None
        for stats in [pool.get_stats()]
    }


async def openapi_document(request: Request) -> Response:
    return Response(context(request).openapi, media_type="application/json")


async def metrics_endpoint(request: Request) -> Response:
    metrics = context(request).metrics
    if metrics.bouncer is not None:
        await metrics.bouncer.refresh()  # SHOW POOLS / SHOW STATS, now
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


def route(path: str, *, template: str | None = None, **handlers) -> Route:
    """One route per path with all its methods (``GET=...``), so that a 405's Allow names them all."""

    async def by_method(request: Request) -> Response:
        return await handlers["GET" if request.method == "HEAD" else request.method](request)

    by_method.__name__ = "_".join(h.__name__ for h in handlers.values())
    return Route(path, endpoint(by_method, template or path), methods=list(handlers))


ENTRY = "/v1/cache/{contentType}/{key}"
LEASE = "/v1/leases/{contentType}/{key}"
ROUTES = [
    route("/healthz", GET=healthz),
    route("/readyz", GET=readyz),
    route("/metrics", GET=metrics_endpoint),
    route("/openapi.json", GET=openapi_document),
    route("/v1/cache/stats", GET=cache.stats),
    route("/v1/cache/lookup", POST=cache.lookup),
    route("/v1/cache", DELETE=cache.erase),
    route("/v1/cache/{content_type}/similar", template="/v1/cache/{contentType}/similar", POST=cache.similar),
    route("/v1/cache/{content_type}/{key:path}", template=ENTRY,
          GET=cache.get_entry, PUT=cache.put_entry, DELETE=cache.delete_entry),
    route("/v1/leases/{content_type}/{key:path}", template=LEASE, POST=cache.take_lease, DELETE=cache.release_lease),
    route("/v1/features/_stats", GET=feature_routes.table_stats),
    route("/v1/features/lookup", POST=feature_routes.lookup),
    route("/v1/features/{entityKey}", GET=feature_routes.get_features),
]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()
    settings.require_jwt_secret()  # refuse to start rather than accept no (or any) token

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        async with open_context(settings) as ctx:
            log.info("ready to serve", extra={"fields": {"pool": settings.database.pool_size, "replica": ctx.replica is not None}})
            yield {"ctx": ctx}  # handlers read it as request.state.ctx (context.context)

    async def not_found(request: Request, exc) -> Response:
        rid = errors.assign_request_id(request)
        response = await errors.on_http_exception(request, exc)
        response.headers["x-request-id"] = rid
        return response

    app = Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.router.redirect_slashes = False  # a key ".." normalised away must find no route, never a redirect
    return app
