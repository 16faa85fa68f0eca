-- Connections to this database by role, application and state, with the oldest
-- transaction and the longest idle-in-transaction. (cache_monitor is granted
-- pg_read_all_stats, so it sees every session, not only its own.)
-- SELECT * FROM cache_connection_metrics;
CREATE VIEW cache_connection_metrics AS
SELECT a.usename                                              AS role_name,
       coalesce(nullif(a.application_name, ''), '(none)')     AS application_name,
       coalesce(a.state, '(unknown)')                         AS state,
       count(*)                                               AS connections,
       count(*) FILTER (WHERE a.wait_event_type = 'Lock')     AS waiting_on_locks,
       max(now() - a.xact_start)                              AS longest_transaction,
       max(now() - a.state_change) FILTER (WHERE a.state LIKE 'idle in transaction%') AS longest_idle_in_transaction,
       sum(count(*)) OVER ()                                  AS total_connections,
       current_setting('max_connections')::integer            AS max_connections,
       round(sum(count(*)) OVER () / current_setting('max_connections')::numeric, 4) AS share_of_max_connections
  FROM pg_stat_activity a
 WHERE a.datname = current_database()
   AND a.backend_type = 'client backend'
 GROUP BY 1, 2, 3;
