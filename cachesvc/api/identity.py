"""Who a request acts for: the bearer token's user, or the user a service token names."""

from __future__ import annotations

import re
import uuid

from starlette.requests import Request

from cachesvc import auth
from cachesvc.api.errors import ApiError, request_id, validation_error
from cachesvc.auth import Actor, VerifiedTokens

USER_HEADER = "x-cache-user"
UUID_RE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def authenticate(request: Request, tokens: VerifiedTokens) -> auth.Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return tokens.verify(token.strip())
    except auth.AuthError as exc:
        raise ApiError(
            401, "unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from None


def acting_user(request: Request, tokens: VerifiedTokens) -> Actor:
    """A user token acts only as its ``sub``; a service token must name the user."""
    principal = authenticate(request, tokens)
    named = request.headers.get(USER_HEADER)  # present but empty is a 400, never "absent"
    if principal.is_service:
        if named is None:
            raise validation_error("a service_role token must name the user in the X-Cache-User header", "X-Cache-User")
        return Actor(_parse_user(named), f"service_role:{principal.subject}", request_id(request))
    if principal.role != "authenticated":
        raise ApiError(403, "forbidden", f"role {principal.role!r} may not use the cache")
    user = uuid.UUID(principal.subject)
    if named is not None and _parse_user(named) != user:
        raise ApiError(403, "forbidden", "a user token acts only for its own user")
    return Actor(user, "user", request_id(request))


def _parse_user(value: str) -> uuid.UUID:
    """The hyphenated form only, as the OpenAPI's ``format: uuid`` says (uuid.UUID reads more)."""
    if not UUID_RE.fullmatch(value):
        raise validation_error("X-Cache-User must be a user uuid (8-4-4-4-12 hex digits)", "X-Cache-User")
    return uuid.UUID(value)
