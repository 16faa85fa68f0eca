"""JSON that jsonb cannot hold (NUL, lone surrogates) is stored as its text.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Two nullable text columns with no default: a catalog-only change on the parent and on every
partition (no rewrite, no scan). A row whose content (or metadata) jsonb refuses keeps the
JSON text verbatim there and a placeholder in the jsonb column; reads return
``coalesce(content_raw, content::text)`` (cachesvc/cache/rawjson.py says what goes where).
"""

from cachesvc import sqlfiles

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Every sql/ file this migration loads: v2 going up, v1 again going down.
SQL_FILES = ["views/user_cache_analytics.v2.sql", "views/user_cache_analytics.v1.sql"]

COLUMNS = """
ALTER TABLE infinite_pages_cache_partitioned ADD COLUMN content_raw text, ADD COLUMN metadata_raw text;
COMMENT ON COLUMN infinite_pages_cache_partitioned.content_raw IS
    'The JSON text of content when jsonb refuses it (\\u0000, a lone surrogate, a number beyond numeric); content then holds null';
COMMENT ON COLUMN infinite_pages_cache_partitioned.metadata_raw IS
    'The JSON text of metadata when jsonb refuses it; metadata then holds {}';
"""

# The old schema cannot represent these rows: without their text, the placeholders would be
# served as content. A cache may lose entries (a miss), never answer wrongly.
DOWNGRADE = """
DELETE FROM infinite_pages_cache_partitioned WHERE content_raw IS NOT NULL OR metadata_raw IS NOT NULL;
DROP VIEW user_cache_analytics;
ALTER TABLE infinite_pages_cache_partitioned DROP COLUMN content_raw, DROP COLUMN metadata_raw;
"""


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute(COLUMNS)
    sqlfiles.run("views/user_cache_analytics.v2.sql")
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.execute(DOWNGRADE)
    sqlfiles.run("views/user_cache_analytics.v1.sql")
    sqlfiles.execute("GRANT SELECT ON user_cache_analytics TO cache_monitor")
    sqlfiles.execute("RESET ROLE")
