-- A user's leases are theirs alone, as their entries are: the service reads, takes and
-- releases a lease only as the user the transaction acts for (cachesvc.user_id).
ALTER TABLE cache_leases ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

CREATE POLICY cache_app_own_rows ON cache_leases
    FOR ALL TO cache_app
    USING (user_id = cachesvc_current_user_id())
    WITH CHECK (user_id = cachesvc_current_user_id());

CREATE POLICY cache_maintainer_all_rows ON cache_leases
    FOR ALL TO cache_maintainer
    USING (true) WITH CHECK (true);
