-- Hourly hits, misses and what they saved, per user and content type. The service
-- aggregates in memory and adds to these rows in one statement every few seconds.
CREATE TABLE cache_access_stats (
    bucket         timestamptz NOT NULL CHECK (bucket = date_trunc('hour', bucket)),
    user_id        uuid        NOT NULL,
    content_type   text        NOT NULL,
    hits           bigint      NOT NULL DEFAULT 0 CHECK (hits >= 0),
    misses         bigint      NOT NULL DEFAULT 0 CHECK (misses >= 0),
    tokens_saved   bigint      NOT NULL DEFAULT 0 CHECK (tokens_saved >= 0),
    cost_saved_usd numeric(18, 6) NOT NULL DEFAULT 0 CHECK (cost_saved_usd >= 0),
    PRIMARY KEY (bucket, user_id, content_type)
);

CREATE INDEX cache_access_stats_user_idx ON cache_access_stats (user_id, bucket);
