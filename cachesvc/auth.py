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


def verify(token: str, secret: str, audience: str) -> Principal:
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
    return Principal(subject=subject, role=role)


def mint(
    secret: str,
    *,
    sub: str,
    role: str = "authenticated",
    audience: str = "authenticated",
    ttl_seconds: int = 3600,
) -> str:
    """A token shaped like a Supabase access token (for development and tests)."""
    now = int(time.time())
    claims = {"sub": sub, "role": role, "aud": audience, "iat": now, "exp": now + ttl_seconds}
    return jwt.encode(claims, secret, algorithm="HS256")
