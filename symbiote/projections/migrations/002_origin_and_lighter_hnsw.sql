-- symbiote projections, version 2.
-- 1. Where each projection began. A projection that began at seq 1 holds every earlier event in
--    its own events table, so the projector looks there (instead of in the stream) for the
--    history of a command it meets after a restart.
ALTER TABLE projection_checkpoints ADD COLUMN from_seq bigint NOT NULL DEFAULT 1;

-- 2. A lighter HNSW graph for memory: m = 8, ef_construction = 32 makes each insert about three
--    times cheaper than the defaults (16, 64), which keeps the live projection lag low; searches
--    raise hnsw.ef_search to keep recall high.
DROP INDEX memory_embedding_hnsw;
CREATE INDEX memory_embedding_hnsw ON memory USING hnsw (embedding vector_cosine_ops) WITH (m = 8, ef_construction = 32);
