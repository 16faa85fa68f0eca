"""Semantic hits in the DBA views: user_cache_analytics v3, cache_performance_metrics v2.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

Both views keep every column they had, in the same order, and gain new ones last:
semantic hits (POST /v1/cache/{contentType}/similar that found an entry, counted apart
from exact hits in cache_access_stats.semantic_hits since 0008) and a reuse rate counting
both kinds of hit. The exact hit rate keeps its meaning (exact hits / exact lookups).

Downgrade drops the new versions and recreates the old ones with their grant.
"""

from cachesvc import sqlfiles

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Every sql/ file this migration loads: the new versions going up, the old ones going down.
SQL_FILES = [
    "views/user_cache_analytics.v3.sql",
    "views/cache_performance_metrics.v2.sql",
    "views/user_cache_analytics.v2.sql",  # downgrade
    "views/cache_performance_metrics.v1.sql",  # downgrade
]


def upgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("views/user_cache_analytics.v3.sql")
    sqlfiles.run("views/cache_performance_metrics.v2.sql")
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    # CREATE OR REPLACE VIEW cannot drop columns: the old versions are created anew.
    sqlfiles.execute("DROP VIEW user_cache_analytics; DROP VIEW cache_performance_metrics;")
    sqlfiles.run("views/user_cache_analytics.v2.sql")
    sqlfiles.run("views/cache_performance_metrics.v1.sql")
    sqlfiles.execute("GRANT SELECT ON user_cache_analytics, cache_performance_metrics TO cache_monitor")
    sqlfiles.execute("RESET ROLE")
