-- A user reads (and erases) only their own statistics; the service adds to the counters
-- only through record_cache_access(), never by writing rows directly.
ALTER TABLE cache_access_stats ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

CREATE POLICY cache_app_own_rows ON cache_access_stats
    FOR SELECT TO cache_app
    USING (user_id = cachesvc_current_user_id());

CREATE POLICY cache_app_erase_own ON cache_access_stats
    FOR DELETE TO cache_app
    USING (user_id = cachesvc_current_user_id());

CREATE POLICY cache_maintainer_all_rows ON cache_access_stats
    FOR ALL TO cache_maintainer
    USING (true) WITH CHECK (true);
