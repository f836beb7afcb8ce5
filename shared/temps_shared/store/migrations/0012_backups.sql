-- The backup catalogue: one row per backup, inserted by the gateway with its RunBackup command
-- and moved along by the backup worker's events (the projector). The store holds the artifacts;
-- a row is `completed` only after the worker wrote the backup's manifest.
CREATE TABLE backups (
    backup_id            uuid PRIMARY KEY,
    service_id           uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    kind                 text NOT NULL DEFAULT 'logical',
    state                text NOT NULL DEFAULT 'requested'
                         CHECK (state IN ('requested', 'running', 'completed', 'failed')),
    location             text,
    bytes_done           bigint NOT NULL DEFAULT 0,
    size_bytes           bigint,
    artifacts            integer,
    reason               text,
    requested_at         timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    finished_at          timestamptz,
    restore_id           uuid,
    restore_state        text CHECK (restore_state IN ('requested', 'completed', 'failed')),
    restore_reason       text,
    restore_finished_at  timestamptz
);
CREATE INDEX backups_by_service ON backups (service_id, requested_at DESC);
