-- Version 2: the same body, with pg_temp named last in its search_path. Where pg_temp is not
-- named, PostgreSQL searches it FIRST for tables: this function runs with its caller's rights,
-- which include a SECURITY DEFINER's (ensure_monthly_partitions), so a login's temp table
-- named like a catalog (pg_temp.pg_class) could steer it. Version 1 had that hole.
--
-- Delete expired cache rows, at most `batch_size` per statement and `max_batches`
-- statements per call; returns how many rows it removed. Rows locked by a concurrent
-- writer are skipped (they are picked up next time), so cleanup never waits on the service.
--
-- One call is one transaction. The `cachesvc cleanup` command calls it with max_batches = 1
-- in autocommit mode, so each batch commits on its own; a DBA may simply run
-- SELECT cleanup_expired_cache_entries_production();
-- Whole months in which everything has expired are cheaper to drop than to delete:
-- `cachesvc partitions retire` does that.
CREATE OR REPLACE FUNCTION cleanup_expired_cache_entries_production(batch_size integer DEFAULT 5000,
                                                         max_batches integer DEFAULT 1000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    total bigint := 0;
    removed bigint;
BEGIN
    IF batch_size IS NULL OR batch_size < 1 OR max_batches IS NULL OR max_batches < 1 THEN
        RAISE EXCEPTION 'batch_size and max_batches must be positive' USING ERRCODE = '22023';
    END IF;
    FOR i IN 1..max_batches LOOP
        DELETE FROM infinite_pages_cache_partitioned c
         USING (SELECT id, created_at
                  FROM infinite_pages_cache_partitioned
                 WHERE expires_at <= statement_timestamp()
                 LIMIT batch_size
                   FOR UPDATE SKIP LOCKED) expired
         WHERE c.id = expired.id AND c.created_at = expired.created_at;
        GET DIAGNOSTICS removed = ROW_COUNT;
        total := total + removed;
        EXIT WHEN removed < batch_size;
    END LOOP;
    RETURN total;
END
$$;
