-- When each user was last erased (DELETE /v1/cache). A counter flush drops a user's counts
-- that began before their erasure (record_cache_access), so statistics another service
-- process counted before the erase cannot come back after it. Written only by
-- cachesvc_begin_erasure(), which also prunes rows older than record_cache_access's window.
CREATE TABLE cache_erasures (
    user_id   uuid        PRIMARY KEY,
    erased_at timestamptz NOT NULL
);
