-- Per user: what they have stored, and their hits and savings over 30 days. content_bytes
-- counts JSON kept as text (content_raw, for what jsonb refuses) instead of its placeholder.
-- Version 3 adds, last, semantic hits (POST /v1/cache/{contentType}/similar answered with an
-- entry; cache_access_stats.semantic_hits) and the reuse rate counting both kinds of hit.
-- hits_30d, misses_30d and hit_rate_30d stay the exact lookups' (GET, batch). A search that
-- finds nothing counts nothing: the app's GET before it counted the miss. So reuse_rate_30d is
-- the share of exact lookups whose content was reused, served at once or found by a search
-- after the miss: (hits + semantic hits) / (hits + misses), at most 1 (a search sent without
-- a GET before it has no miss to make good). tokens_saved_30d and cost_saved_usd_30d (and
-- total_hit_count, on the entries) already count semantic hits as well as exact ones.
-- SELECT * FROM user_cache_analytics ORDER BY live_entries DESC LIMIT 20;
CREATE OR REPLACE VIEW user_cache_analytics AS
WITH entries AS (
    SELECT user_id,
           count(*)                                    AS entries,
           count(*) FILTER (WHERE expires_at > now())  AS live_entries,
           count(DISTINCT content_type)                AS content_types,
           coalesce(sum(hit_count), 0)                 AS total_hit_count,
           coalesce(sum(token_count), 0)               AS tokens_stored,
           coalesce(sum(cost_usd), 0)                  AS cost_stored_usd,
           coalesce(sum(coalesce(pg_column_size(content_raw), pg_column_size(content))), 0) AS content_bytes,
           max(created_at)                             AS last_write_at,
           max(last_accessed_at)                       AS last_access_at
      FROM infinite_pages_cache_partitioned
     GROUP BY user_id
), recent AS (
    SELECT user_id,
           sum(hits)           AS hits_30d,
           sum(misses)         AS misses_30d,
           sum(tokens_saved)   AS tokens_saved_30d,
           sum(cost_saved_usd) AS cost_saved_usd_30d,
           sum(semantic_hits)  AS semantic_hits_30d
      FROM cache_access_stats
     WHERE bucket >= now() - interval '30 days'
     GROUP BY user_id
)
SELECT coalesce(e.user_id, r.user_id)      AS user_id,
       coalesce(e.entries, 0)              AS entries,
       coalesce(e.live_entries, 0)         AS live_entries,
       coalesce(e.content_types, 0)        AS content_types,
       coalesce(e.total_hit_count, 0)      AS total_hit_count,
       coalesce(e.tokens_stored, 0)        AS tokens_stored,
       coalesce(e.cost_stored_usd, 0)      AS cost_stored_usd,
       coalesce(e.content_bytes, 0)        AS content_bytes,
       coalesce(r.hits_30d, 0)             AS hits_30d,
       coalesce(r.misses_30d, 0)           AS misses_30d,
       round(r.hits_30d::numeric / nullif(r.hits_30d + r.misses_30d, 0), 4) AS hit_rate_30d,
       coalesce(r.tokens_saved_30d, 0)     AS tokens_saved_30d,
       coalesce(r.cost_saved_usd_30d, 0)   AS cost_saved_usd_30d,
       e.last_write_at,
       e.last_access_at,
       coalesce(r.semantic_hits_30d, 0)    AS semantic_hits_30d,
       round(least(r.hits_30d + r.semantic_hits_30d, r.hits_30d + r.misses_30d)::numeric
             / nullif(r.hits_30d + r.misses_30d, 0), 4) AS reuse_rate_30d
  FROM entries e
  FULL JOIN recent r ON r.user_id = e.user_id;
