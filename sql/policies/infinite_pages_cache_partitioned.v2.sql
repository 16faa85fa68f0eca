-- Version 2 of the cache's row-level security: reads admit the transaction's set of users
-- (cachesvc_current_user_ids(): one user, or the users of a coalesced read), writes still
-- exactly one user. Replaces cache_app_own_rows (FOR ALL) of version 1.
DROP POLICY cache_app_own_rows ON infinite_pages_cache_partitioned;

CREATE POLICY cache_app_read_rows ON infinite_pages_cache_partitioned
    FOR SELECT TO cache_app
    USING (user_id = ANY (cachesvc_current_user_ids()));

CREATE POLICY cache_app_insert_own ON infinite_pages_cache_partitioned
    FOR INSERT TO cache_app
    WITH CHECK (user_id = cachesvc_current_user_id());

CREATE POLICY cache_app_update_own ON infinite_pages_cache_partitioned
    FOR UPDATE TO cache_app
    USING (user_id = cachesvc_current_user_id())
    WITH CHECK (user_id = cachesvc_current_user_id());

CREATE POLICY cache_app_delete_own ON infinite_pages_cache_partitioned
    FOR DELETE TO cache_app
    USING (user_id = cachesvc_current_user_id());
