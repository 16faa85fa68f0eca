-- reads views only
-- Are the partitions healthy: months covered ahead, RLS forced, sizes, dead tuples, upkeep?
-- (`cachesvc health partitions` reads the same, with thresholds.)
SELECT parent_table, partition_name, is_default, range_start, range_end, rls_enabled, rls_forced, policies,
       row_estimate, total_size, dead_tuples, dead_ratio, last_vacuum, last_analyze
  FROM partition_health_metrics
 ORDER BY parent_table, range_start NULLS FIRST;

-- Months of partitions ahead of the current month, per table (want >= 2; maintenance keeps 3).
SELECT parent_table, count(*) FILTER (WHERE range_start > now()) AS months_ahead,
       bool_or(now() >= range_start AND now() < range_end) AS current_month_present
  FROM partition_health_metrics
 GROUP BY parent_table;
