-- reads views only
-- How well is the cache doing, per content type, over the last 24 hours?
-- psql -f sql/checks/cache_performance.sql
SELECT content_type, live_entries, expired_entries, users, hits_24h, misses_24h, hit_rate_24h,
       semantic_hits_24h, reuse_rate_24h,
       tokens_saved_24h, cost_saved_usd_24h, last_write_at
  FROM cache_performance_metrics
 ORDER BY hits_24h + misses_24h DESC, content_type;
