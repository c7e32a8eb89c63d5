-- Attempts of a run whose execution was lost with its worker, and the Idempotency-Key that
-- makes a repeated submission answer the run it created instead of creating another.

-- 1 for the first attempt; a run lost with its worker is queued again with the next attempt
-- (up to runs.max_attempts).
ALTER TABLE runs ADD COLUMN attempt integer NOT NULL DEFAULT 1 CHECK (attempt >= 1);

-- The caller's Idempotency-Key, unique per owner, and a fingerprint of the request it came
-- with (the same key on a different request is refused).
ALTER TABLE runs ADD COLUMN idempotency_key text;
ALTER TABLE runs ADD COLUMN request_fingerprint text;
CREATE UNIQUE INDEX runs_owner_idempotency_key ON runs (owner_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
