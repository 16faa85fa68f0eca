-- Entity keys the service looked up most, kept across restarts so that warm-up can load
-- their pages first. The service aggregates lookups in memory and adds them here through
-- record_feature_hot_keys() every few seconds; it has no write privilege on the table.
CREATE TABLE feature_hot_keys (
    entity_key   text        PRIMARY KEY CHECK (length(entity_key) BETWEEN 1 AND 512),
    hits         bigint      NOT NULL DEFAULT 0 CHECK (hits >= 0),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX feature_hot_keys_rank_idx ON feature_hot_keys (hits DESC, last_seen_at DESC);
