-- reads views only
-- Which users store the most, and what do they get out of it (30 days)?
SELECT user_id, live_entries, entries, content_types, pg_size_pretty(content_bytes) AS content_size,
       tokens_stored, hits_30d, misses_30d, hit_rate_30d, semantic_hits_30d, reuse_rate_30d, tokens_saved_30d,
       cost_saved_usd_30d, last_write_at
  FROM user_cache_analytics
 ORDER BY content_bytes DESC
 LIMIT 20;
