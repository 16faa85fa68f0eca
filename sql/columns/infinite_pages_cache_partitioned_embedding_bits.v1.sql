-- The prefilter of the similarity search (docs/semantic.md, "The prefilter"): each entry's
-- embedding quantized to one bit per number (pgvector's binary_quantize: 1 where the number is
-- above 0; 48 bytes at 384 numbers, 192 at 1,536), stored beside the vector, and a covering
-- index that holds, for each user and content type, every live entry's bits. A search reads a
-- user's bits side by side from this index (an index-only scan: a few pages, where reading the
-- vectors visits one heap page per entry), keeps the candidates nearest by Hamming distance,
-- and computes the exact cosine distance of those only.
--
-- Only where the embedding column exists (pgvector installed, infinite_pages_cache_partitioned
-- _embedding.v1.sql run): without it there is nothing to quantize. Idempotent, like that file,
-- so a DBA who adds pgvector later runs both. Entries stored before get their bits here.
--
-- The index is partial (entries with an embedding only: a PUT without one does not write to
-- it) and partitioned: every partition has its own, and a month's partition created later gets
-- it with the others.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass
                      AND attname = 'embedding' AND NOT attisdropped) THEN
        RAISE WARNING 'no embedding column (pgvector missing): no similarity prefilter';
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                    WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass
                      AND attname = 'embedding_bits' AND NOT attisdropped) THEN
        ALTER TABLE infinite_pages_cache_partitioned ADD COLUMN embedding_bits bit varying;
    END IF;
    EXECUTE format(
        'UPDATE infinite_pages_cache_partitioned SET embedding_bits = %I.binary_quantize(embedding)::bit varying'
        ' WHERE embedding IS NOT NULL AND embedding_bits IS NULL',
        (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'vector'));
    CREATE INDEX IF NOT EXISTS infinite_pages_cache_semantic_idx
        ON infinite_pages_cache_partitioned (user_id, content_type, expires_at)
        INCLUDE (embedding_bits, id, created_at)
        WHERE embedding_bits IS NOT NULL;
END
$$;
