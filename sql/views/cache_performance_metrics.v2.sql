-- Per content type: what is stored, how often it was served, and what that saved.
-- Version 2 adds, last, semantic hits (POST /v1/cache/{contentType}/similar answered with an
-- entry; cache_access_stats.semantic_hits) and the reuse rate counting both kinds of hit.
-- hits_24h, misses_24h and hit_rate_24h stay the exact lookups' (GET, batch). A search that
-- finds nothing counts nothing: the app's GET before it counted the miss. So reuse_rate_24h is
-- the share of exact lookups whose content was reused, served at once or found by a search
-- after the miss: (hits + semantic hits) / (hits + misses), at most 1 (a search sent without
-- a GET before it has no miss to make good). tokens_saved_24h and cost_saved_usd_24h (and
-- total_hit_count, on the entries) already count semantic hits as well as exact ones.
-- SELECT * FROM cache_performance_metrics;
CREATE OR REPLACE VIEW cache_performance_metrics AS
WITH entries AS (
    SELECT content_type,
           count(*) FILTER (WHERE expires_at > now())  AS live_entries,
           count(*) FILTER (WHERE expires_at <= now()) AS expired_entries,
           count(DISTINCT user_id)                     AS users,
           coalesce(sum(hit_count), 0)                 AS total_hit_count,
           coalesce(sum(token_count) FILTER (WHERE expires_at > now()), 0) AS live_tokens,
           coalesce(sum(cost_usd) FILTER (WHERE expires_at > now()), 0)    AS live_cost_usd,
           max(created_at)                             AS last_write_at
      FROM infinite_pages_cache_partitioned
     GROUP BY content_type
), recent AS (
    SELECT content_type,
           sum(hits)           AS hits_24h,
           sum(misses)         AS misses_24h,
           sum(tokens_saved)   AS tokens_saved_24h,
           sum(cost_saved_usd) AS cost_saved_usd_24h,
           sum(semantic_hits)  AS semantic_hits_24h
      FROM cache_access_stats
     WHERE bucket >= now() - interval '24 hours'
     GROUP BY content_type
)
SELECT coalesce(e.content_type, r.content_type)         AS content_type,
       coalesce(e.live_entries, 0)                      AS live_entries,
       coalesce(e.expired_entries, 0)                   AS expired_entries,
       coalesce(e.users, 0)                             AS users,
       coalesce(e.total_hit_count, 0)                   AS total_hit_count,
       coalesce(e.live_tokens, 0)                       AS live_tokens,
       coalesce(e.live_cost_usd, 0)                     AS live_cost_usd,
       coalesce(r.hits_24h, 0)                          AS hits_24h,
       coalesce(r.misses_24h, 0)                        AS misses_24h,
       round(r.hits_24h::numeric / nullif(r.hits_24h + r.misses_24h, 0), 4) AS hit_rate_24h,
       coalesce(r.tokens_saved_24h, 0)                  AS tokens_saved_24h,
       coalesce(r.cost_saved_usd_24h, 0)                AS cost_saved_usd_24h,
       e.last_write_at,
       coalesce(r.semantic_hits_24h, 0)                 AS semantic_hits_24h,
       round(least(r.hits_24h + r.semantic_hits_24h, r.hits_24h + r.misses_24h)::numeric
             / nullif(r.hits_24h + r.misses_24h, 0), 4) AS reuse_rate_24h
  FROM entries e
  FULL JOIN recent r ON r.content_type = e.content_type;
