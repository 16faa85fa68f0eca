-- pg_prewarm (contrib) lets the service's warm-up load the feature tables' key indexes,
-- and the heap where it fits, into shared buffers after a restart. Creating an extension
-- that is not trusted needs a superuser, and the contrib package may be missing: either
-- way the migration goes on with a warning, and warm-up falls back to index-only reads.
-- It goes into schema `extensions` (the Supabase convention) unless it already exists
-- somewhere else; warm-up finds it wherever it is. A downgrade leaves it in place: it may
-- have been there before, and other users of the database may rely on it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_prewarm') THEN
        RETURN;
    END IF;
    CREATE SCHEMA IF NOT EXISTS extensions;
    CREATE EXTENSION pg_prewarm WITH SCHEMA extensions;
EXCEPTION
    WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
        RAISE WARNING 'pg_prewarm not created (%): feature warm-up will touch index pages instead', SQLERRM;
END
$$;

-- Whoever created it, the service and the maintainer may call it (it checks SELECT
-- privilege on the relation it is given).
DO $$
DECLARE
    ext_schema name;
BEGIN
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'pg_prewarm';
    IF ext_schema IS NOT NULL THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO cache_app, cache_maintainer', ext_schema);
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'could not grant USAGE on the schema of pg_prewarm (%): warm-up will touch index pages instead', SQLERRM;
END
$$;
