"""The cache endpoints: route -> identity -> validation -> store -> JSON.

Writes answer with ``X-Consistency-Token`` (the primary's WAL position after the write); a
read that sends one back is answered by a read replica only once it has replayed that far.

Embeddings (PUT's ``embedding``, the similarity search's query) are checked here; the database
makes them unit vectors (cosine distance does not change), and those whose length a float4
could not hold are scaled here first (docs/semantic.md).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cachesvc.api.context import AppContext, context
from cachesvc.api.errors import ApiError, validation_error
from cachesvc.api.identity import acting_user
from cachesvc.api.wire import check_key, decode, json_response, read_body
from cachesvc.auth import Actor
from cachesvc.cache import models
from cachesvc.cache.statements import SemanticUnavailable
from cachesvc.db.lsn import LSN_RE, parse_lsn
from cachesvc.ratelimit import retry_after

CONSISTENCY_HEADER = "x-consistency-token"


def _actor(request: Request, ctx: AppContext) -> Actor:
    """Who acts (identity.py), within their rate limit."""
    actor = acting_user(request, ctx.tokens)
    request.state.user_id = actor.user_id
    wait = ctx.limiter.take(actor.user_id)
    if wait:
        ctx.metrics.rate_limited.inc()
        raise ApiError(429, "rate_limited", "too many requests for this user; slow down",
                       headers={"Retry-After": retry_after(wait)})
    return actor


def _after_lsn(request: Request) -> int | None:
    """The consistency token a read carries, if any (a WAL position such as ``0/1A2B3C8``)."""
    token = request.headers.get(CONSISTENCY_HEADER)
    if token is None:
        return None
    try:
        if not LSN_RE.fullmatch(token):
            raise ValueError(token)
        return parse_lsn(token)
    except ValueError:
        raise validation_error("X-Consistency-Token must be a token a write returned", "X-Consistency-Token") from None


def _with_token(response: Response, token: str) -> Response:
    response.headers[CONSISTENCY_HEADER] = token
    return response


def check_content_type(value: str, field: str) -> None:
    if not models.is_content_type(value):
        raise validation_error(f"{field} must match {models.CONTENT_TYPE_RE.pattern}", field)


# Lengths whose vector pgvector's float4 holds and normalises exactly (l2_normalize sums the
# squares in float8); others, rare, are scaled to length 1 here first.
SAFE_NORMS = (1e-15, 1e15)


def embedding(values: Sequence[float], dim: int, field: str) -> Sequence[float]:
    """``values`` for the database, which normalises them; a 400 naming ``field`` unless they
    are ``dim`` finite numbers, not all zero (the cosine distance of a zero vector is undefined)."""
    if len(values) != dim:
        raise validation_error(f"{field} must have {dim} numbers (CACHESVC_EMBEDDING_DIM), not {len(values)}", field)
    norm = math.hypot(*values)  # without intermediate overflow; inf only past float8's range
    if SAFE_NORMS[0] <= norm <= SAFE_NORMS[1]:
        return values
    largest = max(map(abs, values))
    if not math.isfinite(largest):
        raise validation_error(f"{field} must hold finite numbers", field)
    if largest == 0:
        raise validation_error(f"{field} must not be all zeros: its cosine distance is undefined", field)
    scaled = [x / largest for x in values]  # to at most 1 first: the length of the scaled ones is finite
    norm = math.hypot(*scaled)
    return [x / norm for x in scaled]


def semantic_unavailable(ctx: AppContext) -> ApiError:
    ctx.metrics.semantic_unavailable.inc()
    return ApiError(501, "semantic_unavailable",
                    "the semantic cache needs pgvector in the database (CREATE EXTENSION vector); see docs/semantic.md")


def _path_params(request: Request) -> tuple[str, str]:
    content_type = request.path_params["content_type"]
    key = request.path_params["key"]
    check_content_type(content_type, "contentType")
    check_key(key, "key")
    return content_type, key


async def get_entry(request: Request) -> Response:
    ctx = context(request)
    actor = _actor(request, ctx)
    content_type, key = _path_params(request)
    entry = await ctx.store.get(actor.user_id, content_type, key, after_lsn=_after_lsn(request))
    ctx.metrics.lookup(content_type, entry is not None)
    if entry is None:
        raise ApiError(404, "cache_miss", f"no live entry for {content_type}/{key}")
    return json_response(entry)


async def put_entry(request: Request) -> Response:
    ctx = context(request)
    actor = _actor(request, ctx)
    content_type, key = _path_params(request)
    body = decode(await read_body(request, ctx.settings.max_body_bytes), models.PutEntry)
    if not models.is_json_object(body.metadata):
        raise validation_error("metadata must be a JSON object", "metadata")
    ttl = ctx.settings.default_ttl_s if body.ttl_seconds is None else int(body.ttl_seconds)
    body = msgspec.structs.replace(body, token_count=int(body.token_count))
    if ttl > ctx.settings.max_ttl_s:
        raise validation_error(f"ttlSeconds must be at most {ctx.settings.max_ttl_s}", "ttlSeconds")
    vector = None if body.embedding is None else embedding(body.embedding, ctx.settings.semantic.embedding_dim, "embedding")
    try:
        entry, replaced, token = await ctx.store.put(actor, content_type, key, body, ttl, vector)
    except SemanticUnavailable:
        raise semantic_unavailable(ctx) from None
    ctx.leases.waiters.notify(actor.user_id, content_type, key)  # its waiters here get it at once
    return _with_token(json_response(entry, 200 if replaced else 201), token)


async def similar(request: Request) -> Response:
    """The caller's live entries of a content type nearest to an embedding (cosine distance)."""
    ctx = context(request)
    actor = _actor(request, ctx)
    content_type = request.path_params["content_type"]
    check_content_type(content_type, "contentType")
    body = decode(await read_body(request, ctx.settings.max_body_bytes), models.SimilarRequest)
    query = embedding(body.embedding, ctx.settings.semantic.embedding_dim, "embedding")
    max_distance = ctx.settings.semantic.max_distance if body.max_distance is None else body.max_distance
    try:
        results = await ctx.store.similar(
            actor.user_id, content_type, query, max_distance=max_distance, limit=int(body.limit),
            candidates=ctx.settings.semantic.candidates, after_lsn=_after_lsn(request),
        )
    except SemanticUnavailable:
        raise semantic_unavailable(ctx) from None
    ctx.metrics.semantic_lookup(content_type, bool(results))
    return json_response(models.SimilarResponse(results=results))


async def delete_entry(request: Request) -> Response:
    ctx = context(request)
    actor = _actor(request, ctx)
    content_type, key = _path_params(request)
    deleted, token = await ctx.store.delete(actor, content_type, key)
    if not deleted:
        raise ApiError(404, "cache_miss", f"no live entry for {content_type}/{key}")
    return _with_token(Response(status_code=204), token)


async def lookup(request: Request) -> Response:
    ctx = context(request)
    actor = _actor(request, ctx)
    body = decode(await read_body(request, ctx.settings.max_body_bytes), models.LookupRequest)
    for index, item in enumerate(body.items):
        check_content_type(item.content_type, f"items[{index}].contentType")
        check_key(item.key, f"items[{index}].key")
    entries = await ctx.store.lookup(actor.user_id, body.items, after_lsn=_after_lsn(request))
    for item, entry in zip(body.items, entries):
        ctx.metrics.lookup(item.content_type, entry is not None)
    results = [
        models.LookupResult(content_type=item.content_type, key=item.key, hit=entry is not None, entry=entry)
        for item, entry in zip(body.items, entries)
    ]
    return json_response(models.LookupResponse(results=results))


async def erase(request: Request) -> Response:
    ctx = context(request)
    actor = _actor(request, ctx)
    deleted, token = await ctx.store.erase(actor)
    return _with_token(json_response(models.EraseResponse(deleted=deleted)), token)


async def stats(request: Request) -> Response:
    ctx = context(request)
    actor = _actor(request, ctx)
    return json_response(await ctx.store.stats(actor.user_id))


LEASE_HEADER = "x-cache-lease"


async def take_lease(request: Request) -> Response:
    """Generate-once (cachesvc.cache.leases): the entry, a lease to generate it, or wait."""
    ctx = context(request)
    actor = _actor(request, ctx)
    content_type, key = _path_params(request)
    raw = await read_body(request, ctx.settings.max_body_bytes)
    body = decode(raw, models.LeaseRequest) if raw.strip() else models.LeaseRequest()
    wait_s = min(int(body.wait_ms), ctx.settings.lease_max_wait_ms) / 1000
    outcome = await ctx.leases.acquire(actor, content_type, key, int(body.lease_seconds), wait_s)
    if outcome.status == "hit":
        ctx.metrics.lookup(content_type, True)
        return json_response(models.LeaseResponse(status="hit", entry=outcome.entry))
    if outcome.status == "granted":
        ctx.metrics.lookup(content_type, False)
        return json_response(
            models.LeaseResponse(status="granted", lease_id=outcome.lease_id, expires_at=outcome.expires_at), 201
        )
    response = json_response(models.LeaseResponse(status="wait", expires_at=outcome.expires_at), 202)
    response.headers["Retry-After"] = "1"
    return response


async def release_lease(request: Request) -> Response:
    """The holder gives its lease up, its generation having failed: a waiter takes over."""
    ctx = context(request)
    actor = _actor(request, ctx)
    content_type, key = _path_params(request)
    try:
        lease_id = uuid.UUID(request.headers.get(LEASE_HEADER, ""))
    except ValueError:
        raise validation_error("X-Cache-Lease must be the leaseId a granted lease returned", "X-Cache-Lease") from None
    if not await ctx.leases.release(actor, content_type, key, lease_id):
        raise ApiError(404, "lease_not_found", f"no lease {lease_id} on {content_type}/{key} (released, expired or not yours)")
    return Response(status_code=204)
