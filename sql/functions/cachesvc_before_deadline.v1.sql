-- Refuses to go on once the request that sent this transaction has given up on it.
--
-- The service sends its request's deadline (by its own clock) as the first statement of every
-- write. A transaction that reaches the server late (held in a frozen PgBouncer or server while
-- the client was already answered 503) fails here and commits nothing, instead of applying a
-- write the client was told had failed, perhaps over a newer one the client made since.
-- statement_timeout cannot do this: it starts counting only when the server reads the query.
--
-- The service's and the database's clocks must agree to well within the request budget: a
-- database clock ahead by X shortens every write's budget by X; one behind by X lets a write
-- that arrives up to X late still apply. It reads no table: no definer rights, no search path
-- to hijack (pinned all the same).
CREATE FUNCTION cachesvc_before_deadline(deadline timestamptz) RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF clock_timestamp() > deadline THEN
        RAISE EXCEPTION 'the request gave up at %; this transaction arrived % later and does nothing',
            deadline, clock_timestamp() - deadline
            USING ERRCODE = 'query_canceled';
    END IF;
END
$$;
