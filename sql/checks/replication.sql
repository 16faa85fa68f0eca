-- reads views only
-- Each standby streaming from this primary (run it on the primary): how far it has received,
-- written, flushed and replayed the WAL, in bytes and in time, and whether it has a slot.
-- An empty result means no standby is connected. The service's own view of its read replica
-- is /readyz ("replica") and the cachesvc_replica_* metrics.
SELECT r.application_name, r.client_addr, r.usename, r.state, r.sync_state,
       pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), r.sent_lsn))   AS not_sent,
       pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), r.replay_lsn)) AS not_replayed,
       r.write_lag, r.flush_lag, r.replay_lag,
       s.slot_name, s.active AS slot_active,
       pg_size_pretty(pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)) AS wal_kept_by_slot
  FROM pg_stat_replication r
  LEFT JOIN pg_replication_slots s ON s.active_pid = r.pid
 ORDER BY r.application_name;
