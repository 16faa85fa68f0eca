-- Per feature table (schema `features`): buffer hit ratios, index vs sequential scans,
-- row estimate and size. A healthy online table serves from shared buffers (hit ratio
-- >= 0.99) and by primary-key index only (seq_scan not growing).
-- SELECT * FROM feature_table_health ORDER BY buffer_hit_ratio NULLS FIRST;
CREATE VIEW feature_table_health AS
SELECT t.schemaname                                          AS schema_name,
       t.relname                                             AS table_name,
       io.heap_blks_hit,
       io.heap_blks_read,
       round(io.heap_blks_hit::numeric / nullif(io.heap_blks_hit + io.heap_blks_read, 0), 4) AS heap_hit_ratio,
       io.idx_blks_hit,
       io.idx_blks_read,
       round(io.idx_blks_hit::numeric / nullif(io.idx_blks_hit + io.idx_blks_read, 0), 4)   AS index_hit_ratio,
       round((io.heap_blks_hit + coalesce(io.idx_blks_hit, 0))::numeric
             / nullif(io.heap_blks_hit + io.heap_blks_read + coalesce(io.idx_blks_hit, 0) + coalesce(io.idx_blks_read, 0), 0), 4)
                                                             AS buffer_hit_ratio,
       coalesce(t.idx_scan, 0)                               AS idx_scan,
       t.seq_scan,
       t.seq_tup_read,
       greatest(c.reltuples, 0)::bigint                      AS row_estimate,
       pg_total_relation_size(t.relid)                       AS total_bytes,
       pg_size_pretty(pg_total_relation_size(t.relid))       AS total_size,
       EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = t.relid AND i.indisprimary) AS has_primary_key
  FROM pg_stat_user_tables t
  JOIN pg_statio_user_tables io ON io.relid = t.relid
  JOIN pg_class c ON c.oid = t.relid
 WHERE t.schemaname = 'features';
