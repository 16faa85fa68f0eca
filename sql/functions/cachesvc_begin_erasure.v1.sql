-- The first statement of an erase (DELETE /v1/cache), for the transaction's user only
-- (cachesvc_current_user_id()); the service deletes the entries and statistics after it, in
-- the same transaction. It:
--   * takes the user's exclusive advisory lock, which counter flushes take shared
--     (record_cache_access, record_cache_hits): a flush of the user that is under way finishes
--     first (and the erase's DELETEs, later statements, see its rows), one that comes later
--     waits for the erase to commit;
--   * records the erasure time in cache_erasures, so that counts taken before it and flushed
--     after it, by any service process, are dropped;
--   * redacts the user's audit rows: cache_key (keys can hold personal data) becomes NULL,
--     which no cache key can be; action, content type and times stay. NULL rather than a
--     hash: a hash of a low-entropy key is found again by hashing guesses.
-- Returns how many audit rows it redacted.
--
-- SECURITY DEFINER (owner cache_maintainer), granted to cache_app, which cannot update the
-- audit log itself. It takes no argument and refuses a transaction whose user is not set to
-- one canonical uuid, or that is a coalesced read (cachesvc.user_ids set).
CREATE FUNCTION cachesvc_begin_erasure()
RETURNS integer
LANGUAGE plpgsql
VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    raw text := current_setting('cachesvc.user_id', true);
    target uuid;
    redacted integer;
BEGIN
    IF coalesce(current_setting('cachesvc.user_ids', true), '') <> '' THEN
        RAISE EXCEPTION 'cachesvc_begin_erasure: a coalesced read cannot erase' USING ERRCODE = '22023';
    END IF;
    IF raw IS NULL OR raw !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
        RAISE EXCEPTION 'cachesvc_begin_erasure: cachesvc.user_id must be one user''s uuid'
              USING ERRCODE = '22023';
    END IF;
    target := cachesvc_current_user_id();

    PERFORM pg_advisory_xact_lock(hashtextextended('cachesvc.erasure/' || target::text, 0));
    INSERT INTO cache_erasures AS e (user_id, erased_at) VALUES (target, clock_timestamp())
    ON CONFLICT (user_id) DO UPDATE SET erased_at = greatest(e.erased_at, excluded.erased_at);
    UPDATE cache_audit_log SET cache_key = NULL WHERE user_id = target AND cache_key IS NOT NULL;
    GET DIAGNOSTICS redacted = ROW_COUNT;
    -- Older records are useless: record_cache_access refuses buckets over 31 days old.
    DELETE FROM cache_erasures WHERE erased_at < now() - interval '32 days';
    RETURN redacted;
END
$$;
