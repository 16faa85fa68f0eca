-- reads views only
-- Who holds connections, in what state, and for how long (PgBouncer's server connections
-- show as the service's login with application_name 'cachesvc').
SELECT role_name, application_name, state, connections, waiting_on_locks, longest_transaction,
       longest_idle_in_transaction, total_connections, max_connections, share_of_max_connections
  FROM cache_connection_metrics
 ORDER BY connections DESC;
