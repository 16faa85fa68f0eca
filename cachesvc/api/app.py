"""The Starlette application: routes, lifecycle (pool, counters flusher), health."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cachesvc import db, migrations
from cachesvc.api import cache, errors, openapi
from cachesvc.api import features as feature_routes
from cachesvc.cache.counters import Counters
from cachesvc.cache.store import CacheStore
from cachesvc.features.catalog import CatalogError
from cachesvc.features.service import FeatureService
from cachesvc.settings import Settings

log = logging.getLogger("cachesvc.api")


def endpoint(handler):
    """Request id in and out, and every failure turned into a typed error body."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        request.state.request_id = rid
        try:
            response = await handler(request)
        except errors.ApiError as exc:
            response = await errors.on_api_error(request, exc)
        except errors.UNAVAILABLE as exc:
            response = await errors.on_database_unavailable(request, exc)
        except Exception as exc:
            response = await errors.on_unexpected(request, exc)
        response.headers["x-request-id"] = rid
        return response

    return wrapped


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    state = request.app.state
    checks = {"pool": False, "schema": False}
    try:
        async with state.pool.connection(timeout=2) as conn:
            checks["pool"] = True
            row = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchone()
            checks["schema"] = bool(row) and row[0] == state.expected_revision
    except Exception as exc:  # readiness reports, it never raises
        log.warning("readiness check failed: %s", exc)
    features = state.features.readiness.status()  # warm-up and its probe (cachesvc.features.readiness)
    ready = all(checks.values()) and features["ready"]
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks, "expectedRevision": state.expected_revision,
         "features": features},
        status_code=200 if ready else 503,
        headers=None if ready else {"Retry-After": "2"},
    )


async def openapi_document(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type="application/json")


ROUTES = [
    Route("/healthz", endpoint(healthz), methods=["GET"]),
    Route("/readyz", endpoint(readyz), methods=["GET"]),
    Route("/openapi.json", endpoint(openapi_document), methods=["GET"]),
    Route("/v1/cache/stats", endpoint(cache.stats), methods=["GET"]),
    Route("/v1/cache/lookup", endpoint(cache.lookup), methods=["POST"]),
    Route("/v1/cache", endpoint(cache.erase), methods=["DELETE"]),
    Route("/v1/cache/{content_type}/{key:path}", endpoint(cache.get_entry), methods=["GET"]),
    Route("/v1/cache/{content_type}/{key:path}", endpoint(cache.put_entry), methods=["PUT"]),
    Route("/v1/cache/{content_type}/{key:path}", endpoint(cache.delete_entry), methods=["DELETE"]),
    Route("/v1/features/_stats", endpoint(feature_routes.table_stats), methods=["GET"]),
    Route("/v1/features/lookup", endpoint(feature_routes.lookup), methods=["POST"]),
    Route("/v1/features/{entityKey}", endpoint(feature_routes.get_features), methods=["GET"]),
]


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        state = app.state
        state.settings = settings
        state.expected_revision = migrations.head_revision()
        state.openapi = openapi.document_bytes()
        state.pool = db.create_pool(settings)
        state.counters = Counters()
        state.store = CacheStore(state.pool, settings, state.counters)
        await db.open_pool(state.pool)
        try:
            state.features = await FeatureService.open(state.pool, settings)
        except CatalogError as exc:
            log.error("refusing to start: %s", exc)
            await state.pool.close()
            raise
        flusher = asyncio.create_task(state.counters.run(state.pool, settings.flush_interval_s))
        try:
            yield
        finally:
            await state.features.close()
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            try:
                await state.counters.flush(state.pool)
            except Exception as exc:
                log.error("final counter flush failed; %d counters lost: %s", state.counters.pending, exc)
            await state.pool.close()

    async def not_found(request: Request, exc) -> Response:
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        return await errors.on_http_exception(request, exc)

    return Starlette(routes=ROUTES, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
