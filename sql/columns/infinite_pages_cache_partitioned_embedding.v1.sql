-- The embedding of an entry, for the semantic cache (docs/semantic.md): pgvector's `vector`
-- without a fixed dimension (CACHESVC_EMBEDDING_DIM is the service's setting, and searches
-- compare only vectors of the dimension asked), unit length (the service's PUT stores
-- l2_normalize() of it, so cosine distance never meets an overflowing norm), NULL for entries
-- stored without one.
--
-- Added only where pgvector exists (vector.v1.sql): without it the cache works as before and
-- the service answers the semantic routes with 501. Adding a nullable column without a
-- default changes only the catalog, on the parent and every partition, whatever their size.
--
-- STORAGE MAIN keeps the vector in the row: a similarity search reads the vector of every
-- live entry of the user, and an out-of-line (TOAST) vector costs an index lookup and chunk
-- reads more per row (`external`, pgvector's default, moves a 384-dimension vector out as
-- soon as the row passes ~2 kB). The content is moved out of line first instead.
DO $$
DECLARE
    ext_schema name;
BEGIN
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF ext_schema IS NULL THEN
        RAISE WARNING 'pgvector is not installed in this database: no embedding column, the semantic cache is unavailable';
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_attribute
                WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass
                  AND attname = 'embedding' AND NOT attisdropped) THEN
        RETURN;
    END IF;
    EXECUTE format('ALTER TABLE infinite_pages_cache_partitioned ADD COLUMN embedding %I.vector', ext_schema);
    ALTER TABLE infinite_pages_cache_partitioned ALTER COLUMN embedding SET STORAGE MAIN;
END
$$;
