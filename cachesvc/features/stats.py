"""Health of the feature tables: the figures of the ``feature_table_health`` view.

The service's role may not read the monitoring views, so the same expressions are run here
against ``pg_stat_user_tables`` / ``pg_statio_user_tables`` (readable by every role), for
whichever schema the service serves. A healthy online table is served from shared buffers
(hit ratio >= 0.99) and by its primary key index only (no sequential scan reads rows).
"""

from __future__ import annotations

from collections.abc import Sequence

from cachesvc.features.models import FeatureStatsResponse, FeatureTableStats

MIN_HIT_RATIO = 0.99

# Keep in step with sql/views/feature_table_health.v1.sql.
QUERY = """
SELECT t.relname::text                                       AS table_name,
       io.heap_blks_hit,
       io.heap_blks_read,
       round(io.heap_blks_hit::numeric / nullif(io.heap_blks_hit + io.heap_blks_read, 0), 4)::float8,
       io.idx_blks_hit,
       io.idx_blks_read,
       round(io.idx_blks_hit::numeric / nullif(io.idx_blks_hit + io.idx_blks_read, 0), 4)::float8,
       round((io.heap_blks_hit + coalesce(io.idx_blks_hit, 0))::numeric
             / nullif(io.heap_blks_hit + io.heap_blks_read + coalesce(io.idx_blks_hit, 0) + coalesce(io.idx_blks_read, 0), 0), 4)::float8,
       coalesce(t.idx_scan, 0),
       t.seq_scan,
       t.seq_tup_read,
       greatest(c.reltuples, 0)::bigint,
       pg_total_relation_size(t.relid),
       pg_size_pretty(pg_total_relation_size(t.relid)),
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = t.relid AND i.indisprimary)
  FROM pg_stat_user_tables t
  JOIN pg_statio_user_tables io ON io.relid = t.relid
  JOIN pg_class c ON c.oid = t.relid
 WHERE t.schemaname = %s
 ORDER BY t.relname
"""


def warnings_for(table: FeatureTableStats) -> list[str]:
    found = []
    # Creating a table (or its primary key) counts one sequential scan of no rows: only
    # scans that read rows are worth a warning.
    if table.seq_tup_read > 0:
        found.append(
            f"{table.table_name}: sequential scans read {table.seq_tup_read} rows ({table.seq_scan} scans);"
            " lookups should use the primary key index only"
        )
    if table.buffer_hit_ratio is not None and table.buffer_hit_ratio < MIN_HIT_RATIO:
        found.append(
            f"{table.table_name}: buffer hit ratio {table.buffer_hit_ratio} < {MIN_HIT_RATIO};"
            " the table and its index do not stay in shared_buffers"
        )
    if not table.has_primary_key:
        found.append(f"{table.table_name}: no primary key; it cannot be a feature table")
    return found


def report(schema: str, rows: Sequence[Sequence]) -> FeatureStatsResponse:
    fields = FeatureTableStats.__struct_fields__
    tables = [FeatureTableStats(**dict(zip(fields, row))) for row in rows]
    return FeatureStatsResponse(
        schema_name=schema, tables=tables, warnings=[w for t in tables for w in warnings_for(t)]
    )


async def collect(reader, schema: str) -> FeatureStatsResponse:
    """Through the reader's transaction runner: the request's budget and retry, read only."""
    (rows,) = await reader.transactions.run(reader.pool, [(QUERY, (schema,))], read_only=True)
    return report(schema, rows)


def collect_sync(conn, schema: str) -> FeatureStatsResponse:
    return report(schema, conn.execute(QUERY, (schema,)).fetchall())
