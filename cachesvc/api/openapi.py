"""The OpenAPI 3.1 document, built from the same msgspec Structs that validate and encode."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from cachesvc import __version__, keys
from cachesvc.api.errors import ErrorBody
from cachesvc.cache import models
from cachesvc.features import models as feature_models
from cachesvc.db.lsn import LSN_RE
from cachesvc.settings import SemanticSettings

REF = "#/components/schemas/{name}"

ERRORS = {
    "400": "validation_error: a field is invalid (error.field names it), or the JSON is malformed",
    "401": "unauthorized: missing, malformed, forged, expired or unsigned bearer token",
    "403": "forbidden: the token may not act for this user",
    "413": "payload_too_large: body over the configured limit",
    "415": "unsupported_media_type: a body that is not application/json (or */*+json) in UTF-8; "
           "a body without Content-Type is read as JSON",
    "429": "rate_limited: too many requests for this user (see Retry-After)",
    "503": "unavailable: the database cannot be reached right now (see Retry-After)",
    "501": "semantic_unavailable: the database has no pgvector, so embeddings cannot be stored or searched "
           "(everything else works)",
}


def _json(schema_ref: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": REF.format(name=schema_ref)}}}}


def _errors(*statuses: str) -> dict:
    return {s: _json("ErrorBody", ERRORS[s]) for s in statuses}


def _common(*extra: str) -> dict:
    return _errors("400", "401", "403", "429", "503", *extra)


BODY_ERRORS = ("413", "415")
KEY_SCHEMA = {"type": "string", "minLength": 1, "maxLength": keys.MAX_LENGTH, "pattern": keys.PATTERN}


ENTRY_PARAMS = [
    {"name": "contentType", "in": "path", "required": True,
     "schema": {"type": "string", "pattern": models.CONTENT_TYPE_RE.pattern}},
    {"name": "key", "in": "path", "required": True, "schema": KEY_SCHEMA,
     "description": f"URL-encoded; may contain '/'. {keys.DESCRIPTION}"},
]
USER_HEADER = {
    "name": "X-Cache-User", "in": "header", "required": False, "schema": {"type": "string", "format": "uuid"},
    "description": "The user a service_role token acts for (required with one); a user token may only name itself.",
}
MISS = {"404": _json("ErrorBody", "cache_miss: no live entry (expired entries are misses)")}
CONSISTENCY_PARAM = {
    "name": "X-Consistency-Token", "in": "header", "required": False,
    "schema": {"type": "string", "pattern": LSN_RE.pattern, "examples": ["0/1A2B3C8"]},
    "description": "A token a write returned: the read then sees that write, whichever service instance made it.",
}
CONSISTENCY_HEADERS = {"X-Consistency-Token": {
    "description": "Send it back with reads that must see this write (from any service instance).",
    "schema": {"type": "string", "pattern": LSN_RE.pattern},
}}


def _written(response: dict) -> dict:
    return response | {"headers": CONSISTENCY_HEADERS}


FEATURE_ERRORS = {
    **_errors("400", "401"),
    "403": _json("ErrorBody", "forbidden: only service_role tokens may read features (unless opened to user tokens)"),
    **_errors("503"),
}
def _table_names(tables: Sequence[str]) -> dict:
    """The feature tables this service serves (its catalog at start-up)."""
    return {"enum": list(tables)} if tables else {"type": "string", "pattern": feature_models.TABLE_NAME_PATTERN}


def feature_paths(tables: Sequence[str]) -> dict:
    return {
    "/v1/features/{entityKey}": {
        "get": {
            "operationId": "getFeatures", "summary": "One entity's features from every table (or the tables named)",
            "parameters": [
                {"name": "entityKey", "in": "path", "required": True,
                 "schema": KEY_SCHEMA | {"pattern": keys.SEGMENT_PATTERN},
                 "description": f"URL-encoded, without '/' (use POST /v1/features/lookup for such keys). {keys.DESCRIPTION}"},
                {"name": "tables", "in": "query", "required": False, "style": "form", "explode": False,
                 "schema": {"type": "array", "minItems": 1, "items": _table_names(tables)},
                 "description": "comma-separated feature tables, e.g. tables=a,b (default: all); "
                                "an unknown table is a 400 naming it"},
            ],
            "responses": {"200": _json("FeatureVector", "each table's row for the key, null where it has none"), **FEATURE_ERRORS},
        },
    },
    "/v1/features/lookup": {
        "post": {
            "operationId": "lookupFeatures", "summary": "Features of up to 100 entities in one round trip",
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(name="FeatureLookupRequest")}}}},
            "responses": {"200": _json("FeatureLookupResponse", "results in request order"), **FEATURE_ERRORS, **_errors(*BODY_ERRORS)},
        },
    },
    "/v1/features/_stats": {
        "get": {
            "operationId": "featureStats", "summary": "Per feature table: buffer hit ratio, index vs sequential scans, rows, size",
            "responses": {"200": _json("FeatureStatsResponse", "figures and warnings"), **FEATURE_ERRORS},
        },
    },
    }


def _embedding_schema(schema: dict, dim: int) -> None:
    """An embedding as the service takes it: exactly ``dim`` numbers, at least one not zero."""
    schema.update({"minItems": dim, "maxItems": dim, "contains": {"type": "number", "not": {"const": 0}}})


def document(max_ttl_s: int, tables: Sequence[str] = (), embedding_dim: int = SemanticSettings().embedding_dim) -> dict:
    """The document for a service with these settings: the TTL bound (CACHESVC_MAX_TTL_S), the
    feature tables found, the embedding dimension (CACHESVC_EMBEDDING_DIM)."""
    _, components = msgspec.json.schema_components(
        [models.CacheEntry, models.PutEntry, models.SimilarRequest, models.SimilarResponse,
         models.LookupRequest, models.LookupResponse,
         models.EraseResponse, models.StatsResponse, models.LeaseRequest, models.LeaseResponse, ErrorBody,
         feature_models.FeatureVector, feature_models.FeatureLookupRequest,
         feature_models.FeatureLookupResponse, feature_models.FeatureStatsResponse],
        ref_template=REF,
    )
    ttl = components["PutEntry"]["properties"]["ttlSeconds"]["anyOf"][0]
    ttl["maximum"] = max_ttl_s  # the configured CACHESVC_MAX_TTL_S
    _embedding_schema(components["PutEntry"]["properties"]["embedding"]["anyOf"][0], embedding_dim)
    _embedding_schema(components["SimilarRequest"]["properties"]["embedding"], embedding_dim)
    components["FeatureLookupRequest"]["properties"]["tables"]["anyOf"][0]["items"] = _table_names(tables)
    paths = {
        "/v1/cache/{contentType}/{key}": {
            "parameters": [*ENTRY_PARAMS, USER_HEADER],
            "get": {
                "operationId": "getEntry", "summary": "Read the live entry",
                "parameters": [CONSISTENCY_PARAM],
                "responses": {"200": _json("CacheEntry", "the entry"), **MISS, **_common()},
            },
            "put": {
                "operationId": "putEntry", "summary": "Store an entry, replacing the live one",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(name="PutEntry")}}}},
                "responses": {
                    "200": _written(_json("CacheEntry", "replaced the live entry")),
                    "201": _written(_json("CacheEntry", "stored a new entry")),
                    **_common(*BODY_ERRORS),
                    "501": _json("ErrorBody", ERRORS["501"] + "; only with an embedding, and nothing is stored"),
                },
            },
            "delete": {
                "operationId": "deleteEntry", "summary": "Delete the entry",
                "responses": {"204": _written({"description": "deleted"}), **MISS, **_common()},
            },
        },
        "/v1/leases/{contentType}/{key}": {
            "parameters": [*ENTRY_PARAMS, USER_HEADER],
            "post": {
                "operationId": "takeLease",
                "summary": "Generate once: the entry, or a lease to generate it, or wait for another caller's",
                "requestBody": {"required": False, "content": {"application/json": {"schema": {"$ref": REF.format(name="LeaseRequest")}}}},
                "responses": {
                    "200": _json("LeaseResponse", "status hit: the live entry"),
                    "201": _json("LeaseResponse", "status granted: generate the entry and PUT it; the PUT releases the lease"),
                    "202": _json("LeaseResponse", "status wait: another caller holds the lease (until expiresAt); ask again")
                           | {"headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                    **_common(*BODY_ERRORS),
                },
            },
            "delete": {
                "operationId": "releaseLease", "summary": "Give a lease up (the generation failed): a waiting caller takes over",
                "parameters": [{"name": "X-Cache-Lease", "in": "header", "required": True,
                                "schema": {"type": "string", "format": "uuid"}, "description": "the leaseId granted"}],
                "responses": {
                    "204": {"description": "released"},
                    "404": _json("ErrorBody", "lease_not_found: released, expired, taken over, or another user's"),
                    **_common(),
                },
            },
        },
        "/v1/cache/{contentType}/similar": {
            "parameters": [ENTRY_PARAMS[0], USER_HEADER],
            "post": {
                "operationId": "similarEntries",
                "summary": "Semantic cache: the caller's live entries nearest to an embedding (cosine distance), nearest first",
                "parameters": [CONSISTENCY_PARAM],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(name="SimilarRequest")}}}},
                "responses": {
                    "200": _json("SimilarResponse", "the matches within maxDistance, nearest first (none: an empty list)"),
                    **_common(*BODY_ERRORS),
                    "501": _json("ErrorBody", ERRORS["501"]),
                },
            },
        },
        "/v1/cache/lookup": {
            "parameters": [USER_HEADER],
            "post": {
                "operationId": "lookupEntries", "summary": "Look up to 100 entries in one round trip",
                "parameters": [CONSISTENCY_PARAM],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": REF.format(name="LookupRequest")}}}},
                "responses": {"200": _json("LookupResponse", "results in request order"), **_common(*BODY_ERRORS)},
            },
        },
        "/v1/cache": {
            "parameters": [USER_HEADER],
            "delete": {
                "operationId": "eraseUser", "summary": "Erase every entry and statistic of the user (right to erasure)",
                "responses": {"200": _written(_json("EraseResponse", "how many entries were deleted")), **_common()},
            },
        },
        "/v1/cache/stats": {
            "parameters": [USER_HEADER],
            "get": {
                "operationId": "getStats", "summary": "The user's hits, misses and savings",
                "responses": {"200": _json("StatsResponse", "statistics"), **_common()},
            },
        },
        **feature_paths(tables),
        "/healthz": {"get": {"operationId": "healthz", "security": [], "summary": "Process alive",
                             "responses": {"200": {"description": "alive"}}}},
        "/metrics": {"get": {"operationId": "metrics", "security": [], "summary": "Prometheus metrics",
                             "responses": {"200": {"description": "text exposition format",
                                                   "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/readyz": {"get": {"operationId": "readyz", "security": [], "summary": "Ready to serve",
                            "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "cachesvc", "version": __version__,
                 "description": "PostgreSQL-backed cache for AI-generated content, per user, and online feature lookups."},
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def document_bytes(max_ttl_s: int, tables: Sequence[str] = (),
                   embedding_dim: int = SemanticSettings().embedding_dim) -> bytes:
    return msgspec.json.encode(document(max_ttl_s, tables, embedding_dim))
