-- reads views only
-- Are the cache, the audit log and the feature tables read by index? A growing seq_scan on a
-- large table is a missing index or a bad plan.
SELECT schemaname, relname, seq_scan, seq_tup_read, idx_scan,
       round(idx_scan::numeric / nullif(idx_scan + seq_scan, 0), 4) AS index_scan_share,
       n_live_tup
  FROM pg_stat_user_tables
 WHERE relname LIKE 'infinite_pages_cache%' OR relname LIKE 'cache_%' OR schemaname = 'features'
 ORDER BY seq_tup_read DESC
 LIMIT 50;

-- Feature tables: buffer hit ratio (want >= 0.99) and scans.
SELECT table_name, buffer_hit_ratio, heap_hit_ratio, index_hit_ratio, idx_scan, seq_scan, row_estimate, total_size
  FROM feature_table_health
 ORDER BY buffer_hit_ratio NULLS FIRST;
