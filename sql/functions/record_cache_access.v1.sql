-- Add one flush of the service's in-memory access counters to cache_access_stats, in one
-- statement for all users. Parallel arrays, one element per (hour, user, content type).
--
-- SECURITY DEFINER (owner cache_maintainer): cache_app cannot write cache_access_stats
-- rows itself, it can only add non-negative amounts through here.
CREATE FUNCTION record_cache_access(buckets timestamptz[], user_ids uuid[], content_types text[],
                                    hits bigint[], misses bigint[], tokens_saved bigint[],
                                    cost_saved_usd numeric[])
RETURNS integer
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    WITH added AS (
        INSERT INTO cache_access_stats AS s
               (bucket, user_id, content_type, hits, misses, tokens_saved, cost_saved_usd)
        SELECT date_trunc('hour', b), u, ct, greatest(h, 0), greatest(m, 0), greatest(t, 0), greatest(c, 0)
          FROM unnest(buckets, user_ids, content_types, hits, misses, tokens_saved, cost_saved_usd)
               AS x(b, u, ct, h, m, t, c)
        ON CONFLICT (bucket, user_id, content_type) DO UPDATE
           SET hits = s.hits + excluded.hits,
               misses = s.misses + excluded.misses,
               tokens_saved = s.tokens_saved + excluded.tokens_saved,
               cost_saved_usd = s.cost_saved_usd + excluded.cost_saved_usd
        RETURNING 1)
    SELECT count(*)::integer FROM added
$$;
