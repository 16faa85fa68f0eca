"""The cache's SQL: every statement the store sends (cachesvc.cache.store runs them, one
transaction per operation), and the semantic cache's, which name pgvector's schema.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
from psycopg import errors

# content_raw / metadata_raw hold JSON text that jsonb refuses (rawjson.py), verbatim.
ENTRY_COLUMNS = (
    "id, created_at, content_type, cache_key, coalesce(content_raw, content::text),"
    " coalesce(metadata_raw, metadata::text), token_count,"
    " cost_usd::float8, model, hit_count, last_accessed_at, expires_at"
)

GET = f"""
SELECT {ENTRY_COLUMNS}
  FROM infinite_pages_cache_partitioned
 WHERE user_id = %s AND content_type = %s AND cache_key = %s AND expires_at > now()
 ORDER BY created_at DESC
 LIMIT 1
"""

LOOKUP = f"""
SELECT q.ord, c.*
  FROM unnest(%s::text[], %s::text[]) WITH ORDINALITY AS q(content_type, cache_key, ord)
  CROSS JOIN LATERAL (
        SELECT {ENTRY_COLUMNS}
          FROM infinite_pages_cache_partitioned
         WHERE user_id = %s AND content_type = q.content_type AND cache_key = q.cache_key
           AND expires_at > now()
         ORDER BY created_at DESC
         LIMIT 1) AS c
"""

BATCH_GET = f"""
SELECT q.ord, c.*
  FROM unnest(%s::uuid[], %s::text[], %s::text[]) WITH ORDINALITY AS q(user_id, content_type, cache_key, ord)
  CROSS JOIN LATERAL (
        SELECT {ENTRY_COLUMNS}
          FROM infinite_pages_cache_partitioned AS e
         WHERE e.user_id = q.user_id AND e.content_type = q.content_type AND e.cache_key = q.cache_key
           AND e.expires_at > now()
         ORDER BY e.created_at DESC
         LIMIT 1) AS c
"""

# jsonb input errors that the store answers by keeping the JSON as text (see _json_columns).
JSONB_REFUSALS = (errors.NumericValueOutOfRange, errors.UntranslatableCharacter, errors.InvalidTextRepresentation)

# Serialises writers of one (user, content type, key): the replacement below cannot be a
# unique constraint on a table partitioned by created_at.
LOCK_KEY = "SELECT pg_advisory_xact_lock(hashtextextended(%s || '/' || %s || '/' || %s, 0))"

PUT_TEMPLATE = f"""
WITH replaced AS (
    DELETE FROM infinite_pages_cache_partitioned
     WHERE user_id = %(user)s AND content_type = %(ct)s AND cache_key = %(key)s
    RETURNING expires_at > now() AS was_live
), stored AS (
    INSERT INTO infinite_pages_cache_partitioned
           (user_id, content_type, cache_key, content, metadata, content_raw, metadata_raw,
            token_count, cost_usd, model, expires_at{{embedding_column}})
    VALUES (%(user)s, %(ct)s, %(key)s, %(content)s::jsonb, %(metadata)s::jsonb, %(content_raw)s, %(metadata_raw)s,
            %(tokens)s, %(cost)s, %(model)s, now() + make_interval(secs => %(ttl)s){{embedding_value}})
    RETURNING {ENTRY_COLUMNS}
), released AS (
    DELETE FROM cache_leases WHERE user_id = %(user)s AND content_type = %(ct)s AND cache_key = %(key)s
), audit AS (
    INSERT INTO cache_audit_log (user_id, actor, action, content_type, cache_key, details)
    SELECT %(user)s, %(actor)s, 'put', %(ct)s, %(key)s,
           jsonb_build_object('ttlSeconds', %(ttl)s, 'tokenCount', %(tokens)s, 'model', %(model)s::text,
                              'replaced', coalesce((SELECT bool_or(was_live) FROM replaced), false),
                              'requestId', %(request_id)s::text)
)
SELECT stored.*, coalesce((SELECT bool_or(was_live) FROM replaced), false) FROM stored
"""
# The audit row never holds the embedding (nor the content): who, what, when.
PUT = PUT_TEMPLATE.format(embedding_column="", embedding_value="")

DELETE = """
WITH deleted AS (
    DELETE FROM infinite_pages_cache_partitioned
     WHERE user_id = %(user)s AND content_type = %(ct)s AND cache_key = %(key)s
    RETURNING expires_at > now() AS was_live
), live AS (
    SELECT coalesce(bool_or(was_live), false) AS found FROM deleted
), audit AS (
    INSERT INTO cache_audit_log (user_id, actor, action, content_type, cache_key, details)
    SELECT %(user)s, %(actor)s, 'delete', %(ct)s, %(key)s, jsonb_build_object('requestId', %(request_id)s::text)
      FROM live WHERE found
)
SELECT found FROM live
"""

# An erase is two statements: cachesvc_begin_erasure() (the user's erasure lock, the erasure
# time that counter flushes respect, audit keys redacted), then, with a snapshot taken after
# that lock, the deletes and the erase's own audit row.
BEGIN_ERASURE = "SELECT cachesvc_begin_erasure()"

ERASE = """
WITH deleted AS (
    DELETE FROM infinite_pages_cache_partitioned WHERE user_id = %(user)s RETURNING 1
), stats AS (
    DELETE FROM cache_access_stats WHERE user_id = %(user)s RETURNING 1
), leases AS (
    DELETE FROM cache_leases WHERE user_id = %(user)s
), counted AS (
    SELECT (SELECT count(*) FROM deleted) AS entries, (SELECT count(*) FROM stats) AS stat_rows
), audit AS (
    INSERT INTO cache_audit_log (user_id, actor, action, details)
    SELECT %(user)s, %(actor)s, 'erase',
           jsonb_build_object('entries', entries, 'statRows', stat_rows, 'requestId', %(request_id)s::text)
      FROM counted
)
SELECT entries FROM counted
"""

# Sent after a write's COMMIT, in the same query string: a WAL position at or past the end of
# its commit record (the insert position: with synchronous_commit off the record may not be
# written yet, and the write position could still be short of it).
WAL_POSITION = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"

STATS = """
SELECT content_type, sum(hits)::bigint, sum(misses)::bigint, sum(semantic_hits)::bigint,
       sum(tokens_saved)::bigint, sum(cost_saved_usd)::float8
  FROM cache_access_stats
 WHERE user_id = %s
 GROUP BY content_type
 ORDER BY content_type
"""


# -- the semantic cache ------------------------------------------------------------------------

# The schema of pgvector's type, found through the embedding column (none: no semantic cache),
# where pgvector is 0.7 or later (l2_normalize) and the prefilter's column exists (migration 0010).
EMBEDDING_TYPE_SCHEMA = """
SELECT n.nspname
  FROM pg_attribute a
  JOIN pg_type t ON t.oid = a.atttypid
  JOIN pg_namespace n ON n.oid = t.typnamespace
 WHERE a.attrelid = 'infinite_pages_cache_partitioned'::regclass
   AND a.attname = 'embedding' AND NOT a.attisdropped AND t.typname = 'vector'
   AND EXISTS (SELECT 1 FROM pg_attribute b WHERE b.attrelid = a.attrelid AND b.attname = 'embedding_bits' AND NOT b.attisdropped)
   AND EXISTS (SELECT 1 FROM pg_proc p WHERE p.proname = 'l2_normalize' AND p.pronamespace = n.oid)
"""
RECHECK_MISSING_S = 60.0  # a missing pgvector is looked for again after this long

# The caller's live entries of one content type, nearest first, by cosine distance. Vectors of
# another dimension (the setting changed) are skipped, never compared. Stored vectors have
# length 1 (see the PUT); the query is made so too. Two ways (docs/semantic.md measures both):
#
# The exact scan (CACHESVC_SIMILARITY_CANDIDATES=0): every live entry of the user read through
# the lookup index (user_id, content_type, …), every distance computed, the nearest kept, and
# only then their columns read (computing them for every scanned row cost a third of the time).
# It visits one heap page per entry of the user.
SIMILAR_EXACT_TEMPLATE = f"""
SELECT {ENTRY_COLUMNS}, nearest.distance
  FROM (SELECT e.id AS nearest_id, e.created_at AS nearest_created_at,
               e.embedding OPERATOR({{schema}}.<=>) {{schema}}.l2_normalize(%(query)s::{{schema}}.vector) AS distance
          FROM infinite_pages_cache_partitioned AS e
         WHERE e.user_id = %(user)s AND e.content_type = %(ct)s AND e.expires_at > now()
           AND e.embedding IS NOT NULL AND {{schema}}.vector_dims(e.embedding) = %(dim)s
         ORDER BY distance, e.created_at DESC, e.id
         LIMIT %(limit)s) AS nearest
  JOIN infinite_pages_cache_partitioned
    ON id = nearest.nearest_id AND created_at = nearest.nearest_created_at
 WHERE nearest.distance <= %(max_distance)s
 ORDER BY nearest.distance, created_at DESC, id
"""

# The prefiltered search (the default): the user's live entries' bits (one per number, its
# sign: ``embedding_bits``) read side by side from the lookup index (which includes them:
# infinite_pages_cache_lookup_v2_idx) by an index-only scan, the ``candidates`` nearest by
# Hamming distance kept, and for those only their vectors read (of the dimension asked: bits
# written apart from their vector are not trusted), the exact cosine distance computed, and
# the nearest ``limit`` within ``max_distance`` returned with their columns. An entry outside
# the candidates is never returned, so this is exact whenever the user has no more entries
# than candidates, and measured as recall@1 otherwise. (Reading the columns of the few
# candidates here, instead of joining the table once more for the nearest, plans a table
# fewer: 0.1 ms of the 0.6 ms its planning took, docs/semantic.md.)
SIMILAR_TEMPLATE = f"""
SELECT {ENTRY_COLUMNS}, distance
  FROM (SELECT e.*, e.embedding OPERATOR({{schema}}.<=>) {{schema}}.l2_normalize(%(query)s::{{schema}}.vector) AS distance
          FROM (SELECT c.id AS candidate_id, c.created_at AS candidate_created_at
                  FROM infinite_pages_cache_partitioned AS c
                 WHERE c.user_id = %(user)s AND c.content_type = %(ct)s AND c.expires_at > now()
                   AND c.embedding_bits IS NOT NULL AND length(c.embedding_bits) = %(dim)s
                 ORDER BY c.embedding_bits OPERATOR({{schema}}.<~>) %(bits)s::bit varying
                 LIMIT %(candidates)s) AS candidate
          JOIN infinite_pages_cache_partitioned AS e
            ON e.id = candidate.candidate_id AND e.created_at = candidate.candidate_created_at
         WHERE {{schema}}.vector_dims(e.embedding) = %(dim)s) AS ranked
 WHERE distance <= %(max_distance)s
 ORDER BY distance, created_at DESC, id
 LIMIT %(limit)s
"""


class SemanticUnavailable(Exception):
    """The database has no pgvector (no embedding column): the semantic cache cannot work."""


@dataclass(frozen=True, slots=True)
class SemanticStatements:
    """The statements that name pgvector's type and operator, qualified by its schema."""

    put: str
    similar: str
    similar_exact: str

    @classmethod
    def in_schema(cls, schema: str) -> SemanticStatements:
        quoted = '"' + schema.replace('"', '""') + '"'
        return cls(
            put=PUT_TEMPLATE.format(
                embedding_column=", embedding, embedding_bits",
                embedding_value=f", {quoted}.l2_normalize(%(embedding)s::{quoted}.vector), %(embedding_bits)s::bit varying",
            ),
            similar=SIMILAR_TEMPLATE.format(schema=quoted),
            similar_exact=SIMILAR_EXACT_TEMPLATE.format(schema=quoted),
        )


_encode_json = msgspec.json.Encoder().encode


def vector_literal(values: Sequence[float]) -> str:
    """pgvector's text form of a vector, ``[0.1,-0.2,…]``: a JSON array of numbers (msgspec
    writes it ten times faster than joining ``repr``s, which cost 2.8 ms at 1,536 numbers)."""
    return _encode_json(values).decode()


def sign_bits(values: Sequence[float]) -> str:
    """The text of pgvector's ``binary_quantize`` of a vector: ``1`` for each number above 0,
    else ``0`` (what the PUT stores as ``embedding_bits`` and a search compares with it)."""
    return "".join("1" if x > 0 else "0" for x in values)
