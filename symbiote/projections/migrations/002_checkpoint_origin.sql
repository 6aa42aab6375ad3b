-- symbiote projections, version 2: where each projection began.
-- A projection that began at seq 1 holds every earlier event in its own events table, so the
-- projector can look there (instead of in the stream) for the history of a command it meets.
ALTER TABLE projection_checkpoints ADD COLUMN from_seq bigint NOT NULL DEFAULT 1;
