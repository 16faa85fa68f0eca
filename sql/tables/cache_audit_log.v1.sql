-- Who did what to which entry, and when; never the content itself. Partitioned by UTC
-- month of occurred_at, so that old months can be archived and dropped whole.
CREATE TABLE cache_audit_log (
    id           bigint GENERATED ALWAYS AS IDENTITY,
    occurred_at  timestamptz NOT NULL DEFAULT now(),
    user_id      uuid,                                -- whose entry; NULL for maintenance
    actor        text        NOT NULL,                -- 'user', 'service_role', or a maintenance command
    action       text        NOT NULL,                -- put, delete, erase, maintenance.*
    content_type text,
    cache_key    text,
    details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    db_role      text        NOT NULL DEFAULT current_user,
    PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);

CREATE INDEX cache_audit_log_user_idx ON cache_audit_log (user_id, occurred_at);
CREATE INDEX cache_audit_log_action_idx ON cache_audit_log (action, occurred_at);
