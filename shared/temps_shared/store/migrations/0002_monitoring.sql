-- Health monitor work sharing: one row per service. A monitor replica claims the rows that are
-- due (FOR UPDATE SKIP LOCKED) and moves next_probe_at one period ahead in the same statement,
-- so no other replica probes that service again within the period. Written by the monitor only.
CREATE TABLE monitor_schedule (
    service_id     uuid PRIMARY KEY REFERENCES services (id),
    next_probe_at  timestamptz NOT NULL,
    claimed_by     text,
    claimed_at     timestamptz
);
CREATE INDEX monitor_schedule_due ON monitor_schedule (next_probe_at);

-- Read models of the health projector (services/api/temps_api/health_projection.py).
-- The latest check of each service: the monitor's verdict and its figures.
CREATE TABLE service_health (
    service_id        uuid PRIMARY KEY,
    checked_at        timestamptz NOT NULL,
    status            text NOT NULL,          -- the verdict: operational | degraded | down
    reason            text,
    response_time_ms  double precision,
    error             text,
    metrics           jsonb NOT NULL DEFAULT '{}',
    monitor           text NOT NULL
);

-- Every check, for /health's history and uptime_24h_percent; pruned after 30 days.
CREATE TABLE service_health_history (
    id                bigserial PRIMARY KEY,
    service_id        uuid NOT NULL,
    checked_at        timestamptz NOT NULL,
    status            text NOT NULL,
    response_time_ms  double precision,
    error             text,
    monitor           text NOT NULL
);
CREATE INDEX service_health_history_by_service ON service_health_history (service_id, checked_at);

-- The latest PostgreSQL WAL health snapshot of each PostgreSQL service (API.md's shape).
CREATE TABLE postgres_wal_health (
    service_id  uuid PRIMARY KEY,
    probed_at   timestamptz NOT NULL,
    snapshot    jsonb NOT NULL
);
