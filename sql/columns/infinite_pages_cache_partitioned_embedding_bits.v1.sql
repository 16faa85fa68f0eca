-- The prefilter of the similarity search (docs/semantic.md, "The prefilter"): each entry's
-- embedding quantized to one bit per number (pgvector's binary_quantize: 1 where the number is
-- above 0; 48 bytes at 384 numbers, 192 at 1,536), stored beside the vector, and carried by the
-- lookup index. A search reads a user's bits side by side from that index (an index-only scan:
-- a few pages, where reading the vectors visits one heap page per entry), keeps the candidates
-- nearest by Hamming distance, and computes the exact cosine distance of those only.
--
-- The column is a plain `bit varying` and is added everywhere (without pgvector it stays NULL),
-- so the lookup index has one shape on every server. Entries stored before it get their bits
-- here where the embedding column exists. Idempotent: a DBA who adds pgvector later runs the
-- embedding column's file, then this one.
--
-- Why in the lookup index, and not an index of its own: a separate index on (user_id,
-- content_type, expires_at) INCLUDE (embedding_bits, …) lost to the lookup index in the
-- planner's eyes under row-level security (the policy's `user_id = ANY (…)` makes both
-- estimates one row, and the smaller lookup index won by a hair), and the search then read
-- the heap for every entry: 1.9 ms against 0.7 ms at 1,000 entries per user. One index that
-- serves both leaves the planner no such choice, and a PUT writes one index, not two.
-- (user_id, content_type, cache_key ≤ 512, created_at) with (expires_at, id, bits ≤ 2,000
-- bytes at 16,000 numbers) stays under btree's 2,704-byte entry limit.
ALTER TABLE infinite_pages_cache_partitioned ADD COLUMN IF NOT EXISTS embedding_bits bit varying;

DO $$
DECLARE
    ext_schema name;
BEGIN
    SELECT n.nspname INTO ext_schema
      FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
     WHERE e.extname = 'vector';
    IF ext_schema IS NOT NULL AND EXISTS (
            SELECT 1 FROM pg_attribute
             WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass AND attname = 'embedding' AND NOT attisdropped) THEN
        EXECUTE format(
            'UPDATE infinite_pages_cache_partitioned SET embedding_bits = %I.binary_quantize(embedding)::bit varying'
            ' WHERE embedding IS NOT NULL AND embedding_bits IS NULL', ext_schema);
    END IF;
END
$$;

-- The lookup index, version 2: the same keys (GET's newest row of (user, content type, key)
-- first), and what a similarity search's first step reads besides them.
CREATE INDEX IF NOT EXISTS infinite_pages_cache_lookup_v2_idx
    ON infinite_pages_cache_partitioned (user_id, content_type, cache_key, created_at DESC)
    INCLUDE (expires_at, id, embedding_bits);
DROP INDEX IF EXISTS infinite_pages_cache_lookup_idx;
