-- Generate-once leases: while one caller generates an entry that missed, the others with the
-- same (user, content type, key) wait for it instead of paying for the same generation
-- (POST /v1/cache/{contentType}/{key}/lease). One row per key at most: taken when there is
-- none or the one there has expired, removed by the entry's PUT, by its holder's release, by
-- the user's erasure, and (once long expired) by `cleanup-expired`.
--
-- A row, not a session advisory lock: through PgBouncer in transaction mode a session lock
-- would outlive the transaction on a server connection that another client gets next, and
-- a lease must outlive its transaction (the generation takes seconds) and its process.
CREATE TABLE cache_leases (
    user_id      uuid        NOT NULL,
    content_type text        NOT NULL,
    cache_key    text        NOT NULL,
    lease_id     uuid        NOT NULL,
    granted_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (user_id, content_type, cache_key)
);

CREATE INDEX cache_leases_expires_at ON cache_leases (expires_at);
