"""The HTTP service (Starlette): health and readiness for now."""

from __future__ import annotations

import contextlib
import logging

from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from cachesvc import db, migrations
from cachesvc.settings import Settings

log = logging.getLogger("cachesvc.api")


async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks = {"pool": False, "schema": False}
    pool: AsyncConnectionPool = state.pool
    try:
        async with pool.connection(timeout=2) as conn:
            checks["pool"] = True
            row = await (await conn.execute("SELECT version_num FROM alembic_version")).fetchone()
            checks["schema"] = bool(row) and row[0] == state.expected_revision
    except Exception as exc:  # readiness reports, it never raises
        log.warning("readiness check failed: %s", exc)
    ready = all(checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks, "expectedRevision": state.expected_revision},
        status_code=200 if ready else 503,
    )


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings.from_env()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.settings = settings
        app.state.expected_revision = migrations.head_revision()
        app.state.pool = db.create_pool(settings)
        await db.open_pool(app.state.pool)
        try:
            yield
        finally:
            await app.state.pool.close()

    return Starlette(
        routes=[Route("/healthz", healthz), Route("/readyz", readyz)],
        lifespan=lifespan,
    )
