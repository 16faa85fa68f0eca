-- pgvector: the `vector` type and its cosine distance operator (<=>), for the semantic cache
-- (docs/semantic.md). Creating it needs a superuser (it is not a trusted extension), and the
-- server may not have it installed at all: either way the migration goes on with a warning,
-- the cache works without embeddings, and the semantic routes answer 501 semantic_unavailable.
-- It goes into schema `extensions` (the Supabase convention, as pg_prewarm) unless it already
-- exists somewhere else; the service finds it through the type of the embedding column. A
-- downgrade leaves it in place: it may have been there before, and others may rely on it.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector') THEN
        RETURN;
    END IF;
    CREATE SCHEMA IF NOT EXISTS extensions;
    CREATE EXTENSION vector WITH SCHEMA extensions;
EXCEPTION
    WHEN insufficient_privilege OR undefined_file OR feature_not_supported THEN
        RAISE WARNING 'pgvector not created (%): the semantic cache is unavailable (501 semantic_unavailable) until `CREATE EXTENSION vector` and a re-run of migration 0008', SQLERRM
              USING HINT = 'See docs/semantic.md.';
END
$$;

-- Whoever created it, the maintainer (who adds the column) and the service (which casts to
-- the type and uses its operator) may use its schema.
DO $$
DECLARE
    ext_schema name;
BEGIN
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF ext_schema IS NOT NULL THEN
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO cache_app, cache_maintainer', ext_schema);
    END IF;
EXCEPTION
    WHEN insufficient_privilege THEN
        RAISE WARNING 'could not grant USAGE on the schema of pgvector (%): the semantic cache is unavailable', SQLERRM;
END
$$;
