-- Version 2: a count outside 0..10,000,000 is skipped instead of summed, and totals saturate
-- at bigint's maximum. Version 1 summed whatever it was given, so one call with a huge count
-- made every later flush fail with "bigint out of range", for every key, for good.
--
-- Add one flush of the service's in-memory lookup counts to feature_hot_keys, then keep
-- the table small: keys not seen for 30 days go, and beyond 10,000 keys the least used go.
-- Returns how many keys it recorded.
--
-- SECURITY DEFINER (owner cache_maintainer): cache_app cannot write feature_hot_keys
-- itself; it can only add counts of 0..10,000,000 (one flush) for at most 10,000 keys a call.
CREATE OR REPLACE FUNCTION record_feature_hot_keys(entity_keys text[], counts bigint[])
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    recorded integer;
BEGIN
    IF cardinality(entity_keys) > 10000 OR cardinality(entity_keys) <> cardinality(counts) THEN
        RAISE EXCEPTION 'record_feature_hot_keys: at most 10000 keys, one count per key'
              USING ERRCODE = '22023';
    END IF;
    INSERT INTO feature_hot_keys AS h (entity_key, hits, last_seen_at)
    SELECT k, least(sum(n), 9223372036854775807)::bigint, now()
      FROM unnest(entity_keys, counts) AS x(k, n)
     WHERE length(k) BETWEEN 1 AND 512 AND n BETWEEN 0 AND 10000000
     GROUP BY k
    ON CONFLICT (entity_key) DO UPDATE
       SET hits = least(h.hits::numeric + excluded.hits, 9223372036854775807)::bigint,
           last_seen_at = excluded.last_seen_at;
    GET DIAGNOSTICS recorded = ROW_COUNT;
    DELETE FROM feature_hot_keys WHERE last_seen_at < now() - interval '30 days';
    DELETE FROM feature_hot_keys
     WHERE entity_key IN (SELECT entity_key FROM feature_hot_keys
                           ORDER BY hits DESC, last_seen_at DESC OFFSET 10000);
    RETURN recorded;
END
$$;
