"""The feature API's JSON bodies: msgspec Structs, camelCase on the wire.

A table's row travels as raw JSON text built by PostgreSQL (``row_to_json``); the service
never parses it, so numbers stay numbers and timestamps stay ISO 8601 strings.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from cachesvc.features.reader import MAX_KEYS
from cachesvc.keys import Key
from cachesvc.structs import Struct

TABLE_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
TableName = Annotated[str, msgspec.Meta(pattern=TABLE_NAME_PATTERN, description="a feature table")]
FeatureRow = Annotated[
    msgspec.Raw,
    msgspec.Meta(
        description="the table's row for the key, column -> value (numbers as numbers, timestamps ISO 8601); null on a miss",
        extra_json_schema={"type": "object", "additionalProperties": True},
    ),
]


class FeatureVector(Struct, omit_defaults=False):
    """Every requested table's row for one entity key (null where the table has none)."""

    entity_key: str
    features: dict[str, FeatureRow | None]


class FeatureLookupRequest(Struct):
    entity_keys: Annotated[list[Key], msgspec.Meta(min_length=1, max_length=MAX_KEYS)]
    tables: Annotated[list[TableName], msgspec.Meta(min_length=1)] | None = None


class FeatureLookupResponse(Struct):
    results: list[FeatureVector]


class FeatureTableStats(Struct, omit_defaults=False):
    """One feature table's figures, as the feature_table_health view reports them."""

    table_name: str
    heap_blks_hit: int
    heap_blks_read: int
    heap_hit_ratio: float | None
    idx_blks_hit: int | None
    idx_blks_read: int | None
    index_hit_ratio: float | None
    buffer_hit_ratio: float | None
    idx_scan: int
    seq_scan: int
    seq_tup_read: int
    row_estimate: int
    total_bytes: int
    total_size: str
    has_primary_key: bool


class FeatureStatsResponse(Struct):
    schema_name: str
    tables: list[FeatureTableStats]
    warnings: list[str]

