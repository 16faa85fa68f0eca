-- Nobody but the owner's functions reaches erasure records: cache_app and cache_monitor have
-- no privilege on the table, and RLS is forced with a policy for cache_maintainer only.
ALTER TABLE cache_erasures ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

CREATE POLICY cache_maintainer_all_rows ON cache_erasures
    FOR ALL TO cache_maintainer
    USING (true) WITH CHECK (true);
