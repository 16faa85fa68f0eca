"""The similarity search's prefilter: binary-quantized embeddings in the lookup index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

* infinite_pages_cache_partitioned gets a nullable `embedding_bits bit varying` column (one
  bit per number of the embedding; NULL without one, and everywhere without pgvector),
  filled for the entries that already have an embedding;
* the lookup index is rebuilt as infinite_pages_cache_lookup_v2_idx, the same keys
  `(user_id, content_type, cache_key, created_at DESC)` with `INCLUDE (expires_at, id,
  embedding_bits)`: a search reads a user's bits from it alone and computes exact distances
  for the nearest few only (docs/semantic.md measures it; the SQL file says why not an index
  of its own).

The backfill rewrites the rows that have an embedding, and the index is built in the
migration's transaction (an index on a partitioned table cannot be built CONCURRENTLY): on a
large table, run it in a quiet hour.

Downgrade restores the first lookup index and drops the column.
"""

from cachesvc import sqlfiles

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SQL_FILES = ["columns/infinite_pages_cache_partitioned_embedding_bits.v1.sql"]

LOOKUP_V1 = """
CREATE INDEX IF NOT EXISTS infinite_pages_cache_lookup_idx
    ON infinite_pages_cache_partitioned (user_id, content_type, cache_key, created_at DESC)
"""


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("columns/infinite_pages_cache_partitioned_embedding_bits.v1.sql")
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute(LOOKUP_V1)
    sqlfiles.execute("DROP INDEX IF EXISTS infinite_pages_cache_lookup_v2_idx")
    sqlfiles.execute("ALTER TABLE infinite_pages_cache_partitioned DROP COLUMN IF EXISTS embedding_bits")
    sqlfiles.execute("RESET ROLE")
