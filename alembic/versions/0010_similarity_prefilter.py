"""The similarity search's prefilter: binary-quantized embeddings in a covering index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30

* infinite_pages_cache_partitioned gets a nullable `embedding_bits bit varying` column (one
  bit per number of the embedding), filled for the entries that already have an embedding,
  and the partial, partitioned index infinite_pages_cache_semantic_idx
  `(user_id, content_type, expires_at) INCLUDE (embedding_bits, id, created_at)`: a search
  reads a user's bits from it alone and computes exact distances for the nearest few only
  (docs/semantic.md measures it).
* Only where the embedding column exists (pgvector): elsewhere it warns and changes nothing.

The backfill rewrites the rows that have an embedding, and the index is built in the
migration's transaction (an index on a partitioned table cannot be built CONCURRENTLY):
on a large table with many embeddings, run it in a quiet hour.

Downgrade drops the index and the column.
"""

from cachesvc import sqlfiles

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

SQL_FILES = ["columns/infinite_pages_cache_partitioned_embedding_bits.v1.sql"]


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("columns/infinite_pages_cache_partitioned_embedding_bits.v1.sql")
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute("DROP INDEX IF EXISTS infinite_pages_cache_semantic_idx")
    sqlfiles.execute("ALTER TABLE infinite_pages_cache_partitioned DROP COLUMN IF EXISTS embedding_bits")
    sqlfiles.execute("RESET ROLE")
