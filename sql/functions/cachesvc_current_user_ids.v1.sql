-- The users whose rows a read transaction may see: the set in 'cachesvc.user_ids' (a
-- coalesced read of several requests, set by the service with set_config(..., true)),
-- else the single 'cachesvc.user_id', else none. Used only by the SELECT policy of the cache;
-- every write policy keeps requiring the single cachesvc_current_user_id().
CREATE FUNCTION cachesvc_current_user_ids() RETURNS uuid[]
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT CASE
               WHEN coalesce(current_setting('cachesvc.user_ids', true), '') <> ''
                   THEN string_to_array(current_setting('cachesvc.user_ids', true), ',')::uuid[]
               ELSE array_remove(ARRAY[cachesvc_current_user_id()], NULL)
           END
$$;
