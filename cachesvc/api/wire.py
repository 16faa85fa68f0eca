"""JSON in and out, the same for every endpoint: the body read within its limit, decoded into
a msgspec Struct with typed 400s, keys checked, and responses encoded.
"""

from __future__ import annotations

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from cachesvc import keys
from cachesvc.api.errors import ApiError, validation_error

_encode = msgspec.json.Encoder().encode


def json_response(obj, status: int = 200) -> Response:
    return Response(_encode(obj), status_code=status, media_type="application/json")


def check_key(value: str, field: str) -> None:
    """A cache key or feature entity key (cachesvc.keys), from a path or a body."""
    if not keys.is_valid(value):
        raise validation_error(f"{field} must be {keys.DESCRIPTION}", field)


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
