-- Version 3: semantic hits (POST /v1/cache/{contentType}/similar answered with an entry),
-- counted apart from exact hits in their own column, as one more array at the end (so that a
-- service of the previous version, which passes eight arrays, still flushes while it runs).
-- A semantic hit saves what an exact hit saves: tokens and cost are bounded by all hits.
--
-- Add one flush of the service's in-memory access counters to cache_access_stats, in one
-- call for all users. Parallel arrays, one element per (hour, user, content type);
-- counted_since[i] is when the service began counting that element (NULL, or the array
-- omitted: the start of its hour, the most cautious reading).
--
-- SECURITY DEFINER (owner cache_maintainer), granted to cache_app: an API, validated like an
-- HTTP body. A bad element is refused and counted, never raised: one bad element must not stop
-- the flush of every other user's counts (version 1 summed anything, so one call with
-- bigint's maximum made every later flush fail, and a NaN cost made costSavedUsd null).
-- An element is refused unless:
--   * its bucket is finite and within now() - 31 days .. now() + 1 hour (clock skew);
--   * user_id is set and content_type matches the cache's rule ^[a-z][a-z0-9_]{0,63}$;
--   * hits, misses and semantic_hits are 0 .. 10,000,000 (one flush of one user and content type);
--   * tokens_saved is 0 .. (hits + semantic_hits) * 2,147,483,647 (a hit saves at most one
--     entry's token_count);
--   * cost_saved_usd is a finite 0 .. (hits + semantic_hits) * 100,000,000 (a hit saves at most one cost_usd):
--     NaN and Infinity are refused;
--   * counted_since, if given, is within [bucket, bucket + 1 hour) and before now() + 1 hour.
-- Totals saturate at the columns' maximum instead of overflowing.
--
-- Erasure: an element whose counting began before its user's erasure (cache_erasures) plus
-- 30 seconds is dropped, so counts another service process held during an erase never
-- recreate the user's statistics. The 30 seconds cover clock skew between service hosts and
-- the database and the erase transaction itself (bounded by the request budget): counts of
-- the first half-minute after an erase may be dropped too, which is the safe side. Before it
-- looks, the call takes a shared advisory lock per user (in user order), and
-- cachesvc_begin_erasure() the exclusive one: a flush and an erase of one user never overlap.
--
-- Returns how many rows it recorded, and how many elements it refused (invalid) and dropped
-- (user erased after counting began).
CREATE FUNCTION record_cache_access(buckets timestamptz[], user_ids uuid[], content_types text[],
                                    hits bigint[], misses bigint[], tokens_saved bigint[],
                                    cost_saved_usd numeric[], counted_since timestamptz[] DEFAULT NULL,
                                    semantic_hits bigint[] DEFAULT NULL,
                                    OUT recorded integer, OUT refused integer, OUT erased integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    -- A statement of its own: the next one takes its snapshot after the locks are granted,
    -- so it sees an erasure that committed while this call waited.
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('cachesvc.erasure/' || u::text, 0))
       FROM (SELECT DISTINCT u FROM unnest(user_ids) AS u WHERE u IS NOT NULL ORDER BY u) AS users;

    WITH input AS (
        SELECT date_trunc('hour', b) AS bucket, u, ct, h, m, t, c, coalesce(sh, 0) AS sh,
               coalesce(s, date_trunc('hour', b)) AS since,
               coalesce(b >= now() - interval '31 days' AND b <= now() + interval '1 hour'
                        AND u IS NOT NULL
                        AND ct ~ '^[a-z][a-z0-9_]{0,63}$'
                        AND h BETWEEN 0 AND 10000000
                        AND m BETWEEN 0 AND 10000000
                        AND coalesce(sh, 0) BETWEEN 0 AND 10000000
                        AND t::numeric BETWEEN 0 AND (h::numeric + coalesce(sh, 0)) * 2147483647
                        AND c <> 'NaN' AND c BETWEEN 0 AND (h::numeric + coalesce(sh, 0)) * 100000000
                        AND (s IS NULL OR (s >= date_trunc('hour', b)
                                           AND s < date_trunc('hour', b) + interval '1 hour'
                                           AND s <= now() + interval '1 hour')),
                        false) AS valid
          FROM unnest(buckets, user_ids, content_types, hits, misses, tokens_saved, cost_saved_usd,
                      counted_since, semantic_hits) AS x(b, u, ct, h, m, t, c, s, sh)
    ), kept AS (
        SELECT i.* FROM input i
         WHERE i.valid
           AND NOT EXISTS (SELECT 1 FROM cache_erasures e
                            WHERE e.user_id = i.u AND i.since < e.erased_at + interval '30 seconds')
    ), added AS (
        INSERT INTO cache_access_stats AS s
               (bucket, user_id, content_type, hits, misses, tokens_saved, cost_saved_usd, semantic_hits)
        SELECT bucket, u, ct,
               least(sum(h), 9223372036854775807)::bigint, least(sum(m), 9223372036854775807)::bigint,
               least(sum(t), 9223372036854775807)::bigint, least(sum(c), 999999999999.999999),
               least(sum(sh), 9223372036854775807)::bigint
          FROM kept
         GROUP BY bucket, u, ct
         ORDER BY bucket, u, ct
        ON CONFLICT (bucket, user_id, content_type) DO UPDATE
           SET hits = least(s.hits::numeric + excluded.hits, 9223372036854775807)::bigint,
               misses = least(s.misses::numeric + excluded.misses, 9223372036854775807)::bigint,
               tokens_saved = least(s.tokens_saved::numeric + excluded.tokens_saved, 9223372036854775807)::bigint,
               cost_saved_usd = least(s.cost_saved_usd + excluded.cost_saved_usd, 999999999999.999999),
               semantic_hits = least(s.semantic_hits::numeric + excluded.semantic_hits, 9223372036854775807)::bigint
        RETURNING 1)
    SELECT (SELECT count(*) FROM added),
           (SELECT count(*) FROM input WHERE NOT valid),
           (SELECT count(*) FROM input WHERE valid) - (SELECT count(*) FROM kept)
      INTO recorded, refused, erased;
END
$$;
