-- Audit rows that still hold a cache key although their user was erased after them: none,
-- unless `cachesvc audit restore` put back a month archived before the erase. Run as a
-- cache_maintainer login (RLS is forced; that role has a policy that sees every row). To
-- redact what it finds, as the same login:
--   UPDATE cache_audit_log a SET cache_key = NULL
--    WHERE a.cache_key IS NOT NULL
--      AND EXISTS (SELECT 1 FROM cache_audit_log e
--                   WHERE e.action = 'erase' AND e.user_id = a.user_id AND e.occurred_at >= a.occurred_at);
SELECT a.tableoid::regclass AS partition, a.user_id, count(*) AS rows_with_keys,
       max(e.occurred_at) AS erased_at
  FROM cache_audit_log a
  JOIN cache_audit_log e ON e.user_id = a.user_id AND e.action = 'erase' AND e.occurred_at >= a.occurred_at
 WHERE a.cache_key IS NOT NULL
 GROUP BY 1, 2
 ORDER BY 1, 2;
