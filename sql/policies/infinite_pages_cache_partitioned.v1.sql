-- Row-level security of the cache. FORCE makes the owner (cache_maintainer) subject to it
-- too, so maintenance gets an explicit policy. These policies are also copied onto every
-- partition by cachesvc_create_monthly_partition(): a partition named directly is refused
-- by privileges (cache_app has none on partitions) and, behind that, by the same policies.
ALTER TABLE infinite_pages_cache_partitioned ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

CREATE POLICY cache_app_own_rows ON infinite_pages_cache_partitioned
    FOR ALL TO cache_app
    USING (user_id = cachesvc_current_user_id())
    WITH CHECK (user_id = cachesvc_current_user_id());

CREATE POLICY cache_maintainer_all_rows ON infinite_pages_cache_partitioned
    FOR ALL TO cache_maintainer
    USING (true) WITH CHECK (true);
