-- Per-service backup schedule and retention. Every backed-up service gets a row from the
-- backup worker's scheduler; NULL `enabled` follows the service's `backups` parameter (true
-- when absent), NULL `schedule` is the default (daily at a time derived from the service id).
-- Replicas of the backup worker share the rows: one claims a due row (FOR UPDATE SKIP LOCKED)
-- and moves `next_run_at` to the next slot in the transaction that inserts the backup.
CREATE TABLE backup_schedules (
    service_id      uuid PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    enabled         boolean,
    schedule        text,
    retention_days  integer NOT NULL DEFAULT 7 CHECK (retention_days BETWEEN 1 AND 90),
    verify          text NOT NULL DEFAULT 'every' CHECK (verify IN ('every', 'daily', 'off')),
    next_run_at     timestamptz,  -- NULL: to be computed (new row, or the schedule changed)
    claimed_by      text,
    claimed_at      timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX backup_schedules_due ON backup_schedules (next_run_at);
-- The deadline sweep looks only at backups still open.
CREATE INDEX backups_open ON backups (requested_at) WHERE state IN ('requested', 'running');
