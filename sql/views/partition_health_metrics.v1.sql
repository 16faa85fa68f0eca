-- Every partition of the cache table and the audit log: its month, its row-level
-- security, its size and upkeep. A DEFAULT partition shows with is_default = true (there
-- should be none). SELECT * FROM partition_health_metrics ORDER BY parent_table, range_start;
CREATE VIEW partition_health_metrics AS
WITH parts AS (
    SELECT parent.relname                                AS parent_table,
           child.oid                                     AS relid,
           child.relname                                 AS partition_name,
           pg_get_expr(child.relpartbound, child.oid)    AS bound,
           child.relrowsecurity                          AS rls_enabled,
           child.relforcerowsecurity                     AS rls_forced,
           greatest(child.reltuples, 0)::bigint          AS row_estimate
      FROM pg_inherits i
      JOIN pg_class parent ON parent.oid = i.inhparent
      JOIN pg_class child  ON child.oid = i.inhrelid
     WHERE parent.relnamespace = 'public'::regnamespace
       AND parent.relname IN ('infinite_pages_cache_partitioned', 'cache_audit_log')
)
SELECT p.parent_table,
       p.partition_name,
       p.bound = 'DEFAULT'                                              AS is_default,
       (regexp_match(p.bound, 'FROM \(''([^'']+)''\)'))[1]::timestamptz AS range_start,
       (regexp_match(p.bound, 'TO \(''([^'']+)''\)'))[1]::timestamptz   AS range_end,
       p.rls_enabled,
       p.rls_forced,
       (SELECT count(*) FROM pg_policy pol WHERE pol.polrelid = p.relid) AS policies,
       p.row_estimate,
       pg_total_relation_size(p.relid)                                  AS total_bytes,
       pg_size_pretty(pg_total_relation_size(p.relid))                  AS total_size,
       s.n_live_tup                                                     AS live_tuples,
       s.n_dead_tup                                                     AS dead_tuples,
       round(s.n_dead_tup::numeric / nullif(s.n_live_tup + s.n_dead_tup, 0), 4) AS dead_ratio,
       greatest(s.last_vacuum, s.last_autovacuum)                       AS last_vacuum,
       greatest(s.last_analyze, s.last_autoanalyze)                     AS last_analyze
  FROM parts p
  LEFT JOIN pg_stat_all_tables s ON s.relid = p.relid;
