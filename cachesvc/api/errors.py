"""The error envelope: ``{"error": {"code", "message", "requestId", "field"?}}`` with the right status.

Nothing else ever leaves the service on failure: no stack trace, no driver message.
``response_for`` turns any exception a handler raises into its envelope and counts it: a
database that cannot answer is a 503 counted in ``cachesvc_db_errors_total{kind}``, anything
unexpected a 500 counted in ``cachesvc_internal_errors_total``.
"""

from __future__ import annotations

import logging
import re
import uuid

import msgspec
import psycopg
import psycopg_pool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from cachesvc.metrics import Metrics
from cachesvc.structs import Struct

log = logging.getLogger("cachesvc.api")


class ErrorDetail(Struct, omit_defaults=True):
    code: str
    message: str
    request_id: str
    field: str | None = None


class ErrorBody(Struct):
    error: ErrorDetail


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, field: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = headers or {}


def validation_error(message: str, field: str | None = None) -> ApiError:
    return ApiError(400, "validation_error", message, field=field)


def request_id(request: Request) -> str:
    return getattr(request.state, "request_id", "")


REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def assign_request_id(request: Request) -> str:
    """The caller's X-Request-Id if it is a short plain token, else a new one: it is echoed and
    written into logs and audit rows."""
    sent = request.headers.get("x-request-id")
    rid = sent if sent is not None and REQUEST_ID_RE.fullmatch(sent) else uuid.uuid4().hex
    request.state.request_id = rid
    return rid


def error_response(request: Request, status: int, code: str, message: str, *, field=None, headers=None) -> Response:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, request_id=request_id(request), field=field))
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json", headers=headers)


async def on_api_error(request: Request, exc: ApiError) -> Response:
    return error_response(request, exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)


HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type"}


async def on_http_exception(request: Request, exc: HTTPException) -> Response:
    code = HTTP_CODES.get(exc.status_code, "http_error")
    return error_response(request, exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))


async def on_database_unavailable(request: Request, exc: Exception) -> Response:
    """Pool exhausted, connection refused or dropped, statement timed out: retry shortly."""
    log.warning("database unavailable: %s: %s", type(exc).__name__, exc, extra={"fields": {"requestId": request_id(request)}})
    return error_response(
        request, 503, "unavailable", "the database is unavailable; retry shortly", headers={"Retry-After": "2"}
    )


async def on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error", extra={"fields": {"requestId": request_id(request)}})
    return error_response(request, 500, "internal_error", "internal error")


UNAVAILABLE = (
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    psycopg.OperationalError,
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
)


async def response_for(request: Request, exc: Exception, metrics: Metrics) -> Response:
    """The envelope of what a handler raised, counted by kind."""
    if isinstance(exc, ApiError):
        return await on_api_error(request, exc)
    if isinstance(exc, UNAVAILABLE):
        metrics.db_errors.labels(type(exc).__name__).inc()
        return await on_database_unavailable(request, exc)
    metrics.internal_errors.inc()
    return await on_unexpected(request, exc)
