"""Bearer JWTs: verification for requests, and minting for development and tests.

HS256 with the configured secret; Supabase access tokens work unchanged (``sub`` = user
uuid, ``aud`` = ``authenticated``, ``role`` = ``authenticated`` or ``service_role``).
``exp`` is required; ``alg: none`` and every algorithm but HS256 are refused.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import jwt

ALGORITHMS = ["HS256"]
SERVICE_ROLE = "service_role"


class AuthError(Exception):
    """The request's credentials are missing or not acceptable (401)."""


@dataclass(frozen=True, slots=True)
class Principal:
    subject: str  # the token's sub
    role: str  # 'authenticated', 'service_role', ...

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE


@dataclass(frozen=True, slots=True)
class Actor:
    """On whose behalf a request acts (a principal's own user, or the one a service names),
    and who sent it (for the audit log)."""

    user_id: uuid.UUID
    label: str  # 'user' or 'service_role:<sub>'
    request_id: str


class VerifiedTokens:
    """Tokens already verified, until they expire (or at most ``ttl`` seconds).

    An app sends the same access token for each of a user's requests until it expires;
    verifying its signature once, not on every request, saves measurable CPU. Only
    successes are kept, keyed by the whole token string, and never past their ``exp``.
    """

    def __init__(self, secret: str, audience: str, size: int = 10_000, ttl: float = 300.0) -> None:
        if not secret:
            raise ValueError("no JWT secret: a token signed with an empty key would verify")
        self.secret, self.audience, self.size, self.ttl = secret, audience, size, ttl
        self.entries: dict[str, tuple[Principal, float]] = {}

    def verify(self, token: str) -> Principal:
        now = time.time()
        hit = self.entries.get(token)
        if hit is not None and hit[1] > now:
            return hit[0]
        principal, expires = _verify(token, self.secret, self.audience)
        if len(self.entries) >= self.size:
            self.entries.clear()  # simple and bounded; the next requests refill it
        self.entries[token] = (principal, min(expires, now + self.ttl))
        return principal


def verify(token: str, secret: str, audience: str) -> Principal:
    return _verify(token, secret, audience)[0]


def _verify(token: str, secret: str, audience: str) -> tuple[Principal, float]:
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=ALGORITHMS,
            audience=audience,
            options={"require": ["exp", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(f"invalid token: {exc}") from None
    role = claims.get("role") or "authenticated"
    subject = str(claims["sub"])
    if role != SERVICE_ROLE:
        try:
            uuid.UUID(subject)
        except ValueError:
            raise AuthError("invalid token: sub is not a user uuid") from None
    return Principal(subject=subject, role=role), float(claims["exp"])


def mint(
    secret: str,
    *,
    sub: str,
    role: str = "authenticated",
    audience: str = "authenticated",
    ttl_seconds: int = 3600,
) -> str:
    """A token shaped like a Supabase access token (for development and tests)."""
    if not secret:
        raise ValueError("no JWT secret to sign with")
    now = int(time.time())
    claims = {"sub": sub, "role": role, "aud": audience, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")
