"""Semantic cache: an embedding per entry (pgvector, where the server has it) and semantic hits.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29

* pgvector's extension is created by the migrating role (it needs a superuser) in schema
  `extensions`, unless it exists already; where it cannot be (not installed, not allowed)
  the migration warns and goes on: the cache works as before and the semantic routes answer
  501 semantic_unavailable (docs/semantic.md says how to add it later).
* infinite_pages_cache_partitioned gets a nullable `embedding vector` column, only where
  the extension exists: a catalog change, on the parent and every partition.
* cache_access_stats gets `semantic_hits`, and record_cache_access version 3 adds to it
  (one more array, last and optional, so that a running service of 0007 still flushes).

Downgrade drops the column (the embeddings with it) and semantic_hits, restores
record_cache_access version 2, and leaves the extension in place.
"""

from cachesvc import sqlfiles

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SQL_FILES = [
    "extensions/vector.v1.sql",
    "columns/infinite_pages_cache_partitioned_embedding.v1.sql",
    "functions/record_cache_access.v3.sql",
    "functions/record_cache_access.v2.sql",  # downgrade
]

OLD_ACCESS = "record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[], timestamptz[])"
NEW_ACCESS = (
    "record_cache_access(timestamptz[], uuid[], text[], bigint[], bigint[], bigint[], numeric[], timestamptz[], bigint[])"
)

# Every row holds 0: the constraint needs no scan of existing rows (NOT VALID) and holds for new ones.
SEMANTIC_HITS = """
ALTER TABLE cache_access_stats ADD COLUMN semantic_hits bigint NOT NULL DEFAULT 0;
ALTER TABLE cache_access_stats ADD CONSTRAINT cache_access_stats_semantic_hits_check CHECK (semantic_hits >= 0) NOT VALID;
"""


def _grants(signature: str) -> str:
    return f"REVOKE ALL ON FUNCTION {signature} FROM PUBLIC; GRANT EXECUTE ON FUNCTION {signature} TO cache_app;"


def upgrade() -> None:
    sqlfiles.run("extensions/vector.v1.sql")
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("columns/infinite_pages_cache_partitioned_embedding.v1.sql")
    sqlfiles.execute(SEMANTIC_HITS)
    sqlfiles.execute(f"DROP FUNCTION {OLD_ACCESS}")
    sqlfiles.run("functions/record_cache_access.v3.sql")
    sqlfiles.execute(_grants(NEW_ACCESS))
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute(f"DROP FUNCTION {NEW_ACCESS}")
    sqlfiles.run("functions/record_cache_access.v2.sql")
    sqlfiles.execute(_grants(OLD_ACCESS))
    sqlfiles.execute("ALTER TABLE cache_access_stats DROP COLUMN semantic_hits")
    sqlfiles.execute("ALTER TABLE infinite_pages_cache_partitioned DROP COLUMN IF EXISTS embedding")
    sqlfiles.execute("RESET ROLE")
