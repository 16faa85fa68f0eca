-- How much has expired and waits for cleanup, and how much expires in the coming hours?
-- Reads the cache table itself: run as a cache_maintainer login (RLS is forced; that role
-- has a policy that sees every row).
SELECT tableoid::regclass AS partition,
       count(*) FILTER (WHERE expires_at <= now())                          AS expired_waiting,
       count(*) FILTER (WHERE expires_at > now() AND expires_at <= now() + interval '1 hour')  AS expiring_1h,
       count(*) FILTER (WHERE expires_at > now() AND expires_at <= now() + interval '24 hours') AS expiring_24h,
       count(*)                                                             AS total_rows
  FROM infinite_pages_cache_partitioned
 GROUP BY tableoid
 ORDER BY 1;
