"""The cache endpoints: route -> identity -> validation -> store -> JSON.

Writes answer with ``X-Consistency-Token`` (the primary's WAL position after the write); a
read that sends one back is answered by a read replica only once it has replayed that far.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cachesvc import keys
from cachesvc.api.errors import ApiError, validation_error
from cachesvc.api.identity import acting_user
from cachesvc.cache import models
from cachesvc.cache.store import Actor, CacheStore
from cachesvc.ratelimit import retry_after
from cachesvc.db.lsn import LSN_RE, parse_lsn
from cachesvc.settings import Settings

_encode = msgspec.json.Encoder().encode

CONSISTENCY_HEADER = "x-consistency-token"


def json_response(obj, status: int = 200) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json")


def _context(request: Request) -> tuple[CacheStore, Settings]:
    state = request.app.state
    return state.store, state.settings


def _actor(request: Request, settings: Settings) -> Actor:
    """Who acts (identity.py), within their rate limit."""
    actor = acting_user(request, settings)
    request.state.user_id = actor.user_id
    wait = request.app.state.limiter.take(actor.user_id)
    if wait:
        request.app.state.metrics.rate_limited.inc()
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


def check_key(value: str, field: str) -> None:
    if not models.is_valid_key(value):
        raise validation_error(f"{field} must be {keys.DESCRIPTION}", field)


def _path_params(request: Request) -> tuple[str, str]:
    content_type = request.path_params["content_type"]
    key = request.path_params["key"]
    check_content_type(content_type, "contentType")
    check_key(key, "key")
    return content_type, key


def _is_json(media_type: str) -> bool:
    """``application/json`` or ``*/*+json``, in UTF-8 (the only encoding JSON has, RFC 8259)."""
    essence, *params = (part.strip().lower() for part in media_type.split(";"))
    kind, _, subtype = essence.partition("/")
    if not kind or not (subtype == "json" and kind == "application" or subtype.endswith("+json")):
        return False
    charsets = [p.partition("=")[2].strip('"') for p in params if p.partition("=")[0].strip() == "charset"]
    return all(charset == "utf-8" for charset in charsets)


async def read_body(request: Request, limit: int) -> bytes:
    """The JSON body: a body without Content-Type is read as JSON, any other media type is a 415."""
    media_type = request.headers.get("content-type")
    if media_type is not None and not _is_json(media_type):
        raise ApiError(415, "unsupported_media_type", "the body must be JSON: Content-Type application/json")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "payload_too_large", f"request body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode(body: bytes, type_):
    if not body:
        raise validation_error("request body is empty; a JSON object is expected")
    try:
        body.decode("utf-8")  # msgspec.Raw skips over strings without checking their UTF-8
    except UnicodeDecodeError as exc:
        raise validation_error(f"the body is not valid UTF-8 (byte {exc.start})") from None
    try:
        return msgspec.json.decode(body, type=type_)
    except msgspec.ValidationError as exc:
        message = str(exc)
        field = message.rsplit("at `$.", 1)[1].rstrip("`") if "at `$." in message else None
        if field is None and "missing required field `" in message:
            field = message.split("`")[1]
        raise validation_error(message, field) from None
    except msgspec.DecodeError as exc:
        raise validation_error(f"malformed JSON: {exc}") from None
    except RecursionError:
        raise validation_error("JSON nested too deeply") from None


async def get_entry(request: Request) -> Response:
    store, settings = _context(request)
    actor = _actor(request, settings)
    content_type, key = _path_params(request)
    entry = await store.get(actor.user_id, content_type, key, after_lsn=_after_lsn(request))
    request.app.state.metrics.lookup(content_type, entry is not None)
    if entry is None:
        raise ApiError(404, "cache_miss", f"no live entry for {content_type}/{key}")
    return json_response(entry)


async def put_entry(request: Request) -> Response:
    store, settings = _context(request)
    actor = _actor(request, settings)
    content_type, key = _path_params(request)
    body = decode(await read_body(request, settings.max_body_bytes), models.PutEntry)
    if not models.is_json_object(body.metadata):
        raise validation_error("metadata must be a JSON object", "metadata")
    ttl = settings.default_ttl_s if body.ttl_seconds is None else int(body.ttl_seconds)
    body = msgspec.structs.replace(body, token_count=int(body.token_count))
    if ttl > settings.max_ttl_s:
        raise validation_error(f"ttlSeconds must be at most {settings.max_ttl_s}", "ttlSeconds")
    entry, replaced, token = await store.put(actor, content_type, key, body, ttl)
    return _with_token(json_response(entry, 200 if replaced else 201), token)


async def delete_entry(request: Request) -> Response:
    store, settings = _context(request)
    actor = _actor(request, settings)
    content_type, key = _path_params(request)
    deleted, token = await store.delete(actor, content_type, key)
    if not deleted:
        raise ApiError(404, "cache_miss", f"no live entry for {content_type}/{key}")
    return _with_token(Response(status_code=204), token)


async def lookup(request: Request) -> Response:
    store, settings = _context(request)
    actor = _actor(request, settings)
    body = decode(await read_body(request, settings.max_body_bytes), models.LookupRequest)
    for index, item in enumerate(body.items):
        check_content_type(item.content_type, f"items[{index}].contentType")
        check_key(item.key, f"items[{index}].key")
    entries = await store.lookup(actor.user_id, body.items, after_lsn=_after_lsn(request))
    for item, entry in zip(body.items, entries):
        request.app.state.metrics.lookup(item.content_type, entry is not None)
    results = [
        models.LookupResult(content_type=item.content_type, key=item.key, hit=entry is not None, entry=entry)
        for item, entry in zip(body.items, entries)
    ]
    return json_response(models.LookupResponse(results=results))


async def erase(request: Request) -> Response:
    store, settings = _context(request)
    actor = _actor(request, settings)
    deleted, token = await store.erase(actor)
    return _with_token(json_response(models.EraseResponse(deleted=deleted)), token)


async def stats(request: Request) -> Response:
    store, settings = _context(request)
    actor = _actor(request, settings)
    return json_response(await store.stats(actor.user_id))
