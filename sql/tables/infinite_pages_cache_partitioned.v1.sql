-- The cache: one row per stored generation, range-partitioned by UTC month of created_at.
-- "One live entry per (user, content type, key)" cannot be a unique constraint (it would
-- have to include created_at); writers take an advisory transaction lock on the triple
-- and replace the older row, and readers take the newest row.
CREATE TABLE infinite_pages_cache_partitioned (
    id               bigint GENERATED ALWAYS AS IDENTITY,
    user_id          uuid        NOT NULL,
    content_type     text        NOT NULL CHECK (content_type ~ '^[a-z][a-z0-9_]{0,63}$'),
    cache_key        text        NOT NULL CHECK (length(cache_key) BETWEEN 1 AND 512),
    content          jsonb       NOT NULL,
    metadata         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    token_count      integer     NOT NULL DEFAULT 0 CHECK (token_count >= 0),
    cost_usd         numeric(14, 6) NOT NULL DEFAULT 0 CHECK (cost_usd >= 0),
    model            text,
    hit_count        bigint      NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_accessed_at timestamptz,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (id, created_at),
    CHECK (expires_at > created_at)
) PARTITION BY RANGE (created_at);

-- The lookup: newest row of (user, content type, key) first.
CREATE INDEX infinite_pages_cache_lookup_idx
    ON infinite_pages_cache_partitioned (user_id, content_type, cache_key, created_at DESC);
-- Expiry cleanup and the "pending expiry" runbook query.
CREATE INDEX infinite_pages_cache_expires_idx
    ON infinite_pages_cache_partitioned (expires_at);
