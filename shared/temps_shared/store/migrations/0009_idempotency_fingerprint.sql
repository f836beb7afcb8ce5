-- The request an Idempotency-Key was first used for (a hash of its body): the same key with
-- another body is refused instead of replaying an answer to a different request.
ALTER TABLE idempotency_keys ADD COLUMN IF NOT EXISTS request_hash text;
