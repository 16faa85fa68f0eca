"""The cache API's JSON bodies: msgspec Structs, camelCase on the wire.

They validate requests, encode responses, and give the JSON Schema for /openapi.json.
``content`` and ``metadata`` travel as raw JSON text between the client and PostgreSQL's
jsonb: the service checks that they are well-formed but never rebuilds them.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Annotated, Literal

import msgspec

from cachesvc.keys import Key
from cachesvc.settings import MAX_COSINE_DISTANCE, MAX_EMBEDDING_DIM
from cachesvc.structs import Struct

# Patterns are checked again with fullmatch: msgspec (re.search) lets "$" match before a final newline.
CONTENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_BATCH_ITEMS = 100
# cost_usd is numeric(14,6), below 1e8: a bound well inside it, that no rounding can carry over.
MAX_COST_USD = 1_000_000

ContentType = Annotated[str, msgspec.Meta(pattern=CONTENT_TYPE_RE.pattern, description="e.g. story_foundation, chapter")]
# Whole numbers, 600 or 600.0 alike: JSON Schema's "integer" admits both, msgspec's int only the first.
WholeTTL = Annotated[float, msgspec.Meta(ge=1, multiple_of=1)]
WholeTokens = Annotated[float, msgspec.Meta(ge=0, le=2**31 - 1, multiple_of=1)]
Model = Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^\x00]*$", description="the generating model; no NUL")]
AnyJson = Annotated[msgspec.Raw, msgspec.Meta(description="any JSON value")]
# Exactly CACHESVC_EMBEDDING_DIM numbers, not all zero: the handler checks the dimension and the
# values (api/cache.py), and the OpenAPI document states the configured dimension.
Embedding = Annotated[list[float], msgspec.Meta(
    min_length=1, max_length=MAX_EMBEDDING_DIM,
    description="the prompt's embedding: CACHESVC_EMBEDDING_DIM numbers, not all zero (compared by cosine distance)",
)]
MAX_SIMILAR_RESULTS = 20
JsonObject = Annotated[msgspec.Raw, msgspec.Meta(extra_json_schema={"type": "object", "additionalProperties": True})]


class CacheEntry(Struct, omit_defaults=False):
    """A stored generation, as it was when read (hitCount and lastAccessedAt exclude this read)."""

    content_type: ContentType
    key: Key
    content: AnyJson
    metadata: JsonObject
    token_count: int
    cost_usd: float
    model: str | None
    hit_count: int
    created_at: dt.datetime
    last_accessed_at: dt.datetime | None
    expires_at: dt.datetime


class PutEntry(Struct):
    """Body of PUT /v1/cache/{contentType}/{key}."""

    content: AnyJson
    metadata: JsonObject = msgspec.field(default_factory=lambda: msgspec.Raw(b"{}"))
    ttl_seconds: WholeTTL | None = None
    token_count: WholeTokens = 0
    cost_usd: Annotated[float, msgspec.Meta(ge=0, le=MAX_COST_USD)] = 0.0
    model: Model | None = None
    embedding: Embedding | None = None


class SimilarRequest(Struct):
    """Body of POST /v1/cache/{contentType}/similar: the caller's live entries nearest to ``embedding``."""

    embedding: Embedding
    max_distance: Annotated[float, msgspec.Meta(
        ge=0, le=MAX_COSINE_DISTANCE, description="largest cosine distance returned (default CACHESVC_SIMILARITY_MAX_DISTANCE)",
    )] | None = None
    limit: Annotated[float, msgspec.Meta(ge=1, le=MAX_SIMILAR_RESULTS, multiple_of=1, description="most results")] = 1


class SimilarResult(Struct):
    distance: Annotated[float, msgspec.Meta(ge=0, le=MAX_COSINE_DISTANCE, description="cosine distance to the query")]
    entry: CacheEntry


class SimilarResponse(Struct):
    """Nearest first; empty when no live entry of the caller is within maxDistance."""

    results: list[SimilarResult]


class LookupItem(Struct):
    content_type: ContentType
    key: Key


class LookupRequest(Struct):
    items: Annotated[list[LookupItem], msgspec.Meta(min_length=1, max_length=MAX_BATCH_ITEMS)]


class LookupResult(Struct, omit_defaults=True):
    content_type: str
    key: str
    hit: bool
    entry: CacheEntry | None = None


class LookupResponse(Struct):
    results: list[LookupResult]


class EraseResponse(Struct):
    deleted: int


# Generate-once leases (cachesvc.cache.leases); whole numbers, 30 or 30.0 alike (as WholeTTL).
MAX_LEASE_S, DEFAULT_LEASE_S, MAX_WAIT_MS = 300, 30, 20_000
LeaseSeconds = Annotated[float, msgspec.Meta(
    ge=1, le=MAX_LEASE_S, multiple_of=1, description="how long the lease holds if its holder never PUTs",
)]
WaitMs = Annotated[float, msgspec.Meta(
    ge=0, le=MAX_WAIT_MS, multiple_of=1,
    description="how long to wait for another caller's generation before answering wait (at most CACHESVC_LEASE_MAX_WAIT_MS)",
)]


class LeaseRequest(Struct):
    """Body of POST /v1/leases/{contentType}/{key} (optional: an empty body takes the defaults)."""

    lease_seconds: LeaseSeconds = DEFAULT_LEASE_S
    wait_ms: WaitMs = 0


class LeaseResponse(Struct, omit_defaults=True):
    """hit: the entry is there; granted: generate it and PUT it (the PUT releases the lease);
    wait: another caller holds the lease until expiresAt, ask again."""

    status: Literal["hit", "granted", "wait"]
    entry: CacheEntry | None = None
    lease_id: uuid.UUID | None = None
    expires_at: dt.datetime | None = None


class ContentTypeStats(Struct):
    content_type: str
    hits: int
    misses: int
    semantic_hits: int
    hit_rate: float | None
    tokens_saved: int
    cost_saved_usd: float


class StatsResponse(Struct):
    """The caller's counters from cache_access_stats (flushed every few seconds)."""

    hits: int
    misses: int
    semantic_hits: int  # similarity searches answered with an entry (not in hits, misses or hitRate)
    hit_rate: float | None
    tokens_saved: int
    cost_saved_usd: float
    by_content_type: list[ContentTypeStats]


def is_json_object(raw: msgspec.Raw) -> bool:
    return bytes(raw).lstrip()[:1] == b"{"


def is_content_type(value: str) -> bool:
    return CONTENT_TYPE_RE.fullmatch(value) is not None
