-- Add one flush of per-entry hit counts: hit_count += hits, last_accessed_at moves forward
-- only. Rows are named by their primary key (id, created_at), so each lands in its own
-- partition. Entries deleted meanwhile are skipped.
--
-- SECURITY DEFINER (owner cache_maintainer), granted to cache_app: an API, validated like an
-- HTTP body. An element is refused (counted, never raised) unless id and created_at are set,
-- hits is 0 .. 10,000,000 (one flush of one entry) and accessed_at is finite and before
-- now() + 1 hour (clock skew); hit_count saturates at bigint's maximum. Before touching rows,
-- the call takes the shared advisory lock of each entry's user (in user order), as
-- record_cache_access does, so it never waits on an erase while holding rows it erases.
--
-- Returns how many rows it updated and how many elements it refused.
CREATE FUNCTION record_cache_hits(ids bigint[], created_ats timestamptz[], hits bigint[],
                                  accessed_ats timestamptz[], OUT updated integer, OUT refused integer)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('cachesvc.erasure/' || user_id::text, 0))
       FROM (SELECT DISTINCT c.user_id
               FROM unnest(ids, created_ats) AS x(id, created_at)
               JOIN infinite_pages_cache_partitioned c ON c.id = x.id AND c.created_at = x.created_at
              ORDER BY c.user_id) AS users;

    WITH input AS (
        SELECT id, created_at, h, a,
               coalesce(id IS NOT NULL AND created_at IS NOT NULL AND h BETWEEN 0 AND 10000000
                        AND isfinite(a) AND a <= now() + interval '1 hour', false) AS valid
          FROM unnest(ids, created_ats, hits, accessed_ats) AS x(id, created_at, h, a)
    ), summed AS (
        SELECT id, created_at, sum(h) AS h, max(a) AS a FROM input WHERE valid GROUP BY id, created_at
    ), touched AS (
        UPDATE infinite_pages_cache_partitioned c
           SET hit_count = least(c.hit_count::numeric + s.h, 9223372036854775807)::bigint,
               last_accessed_at = greatest(c.last_accessed_at, s.a)
          FROM summed s
         WHERE c.id = s.id AND c.created_at = s.created_at
        RETURNING 1)
    SELECT (SELECT count(*) FROM touched), (SELECT count(*) FROM input WHERE NOT valid)
      INTO updated, refused;
END
$$;
