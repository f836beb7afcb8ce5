-- WAL archiving (pgBackRest) per PostgreSQL service: what the user asked for and where the
-- backup worker is. `request_id` names the request in flight: events of an older request
-- (a redelivery after the user changed their mind) are ignored by the projector.
-- `destination_id`: the backup destination active when archiving was asked for (NULL: the
-- built-in store); the archive stays there.
CREATE TABLE wal_archiving (
    service_id    uuid PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    enabled       boolean NOT NULL,
    state         text NOT NULL CHECK (state IN ('enabling', 'on', 'disabling', 'off', 'failed')),
    step          text,
    reason        text,
    request_id    uuid NOT NULL,
    destination_id uuid REFERENCES backup_destinations (id),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Point-in-time restores into a new service, and how each ended.
CREATE TABLE pitr_restores (
    id                 uuid PRIMARY KEY,
    service_id         uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    source_service_id  uuid NOT NULL,
    target_time        timestamptz,
    state              text NOT NULL CHECK (state IN ('requested', 'completed', 'failed')),
    reason             text,
    requested_at       timestamptz NOT NULL DEFAULT now(),
    finished_at        timestamptz
);
