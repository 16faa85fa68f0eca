-- The service may append audit rows for the user it acts for, and nothing else: it has
-- INSERT only (no SELECT, UPDATE or DELETE), and the policy refuses a row about another user.
ALTER TABLE cache_audit_log ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

CREATE POLICY cache_app_append_own ON cache_audit_log
    FOR INSERT TO cache_app
    WITH CHECK (user_id = cachesvc_current_user_id());

CREATE POLICY cache_maintainer_all_rows ON cache_audit_log
    FOR ALL TO cache_maintainer
    USING (true) WITH CHECK (true);
