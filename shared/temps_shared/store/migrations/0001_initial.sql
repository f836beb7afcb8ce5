-- Desired state: written by the gateway.
CREATE TABLE services (
    id             uuid PRIMARY KEY,
    name           text NOT NULL,
    service_type   text NOT NULL,
    version        text NOT NULL,
    parameters     jsonb NOT NULL DEFAULT '{}',
    resources      jsonb NOT NULL DEFAULT '{}',
    secrets        text NOT NULL,          -- AES-256-GCM ciphertext of the admin credentials
    desired_state  text NOT NULL CHECK (desired_state IN ('running', 'stopped', 'deleted')),
    generation     bigint NOT NULL DEFAULT 1,
    purged         boolean NOT NULL DEFAULT false,  -- deletion finished: nothing of it remains
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX services_live_name ON services (name) WHERE NOT purged;

-- Actual state the provisioner must remember: the loopback ports a service keeps across
-- restarts and recreates, one per (member, port name), e.g. "primary/postgres".
CREATE TABLE service_ports (
    service_id  uuid NOT NULL REFERENCES services (id),
    port_name   text NOT NULL,
    node_id     text NOT NULL,
    local_port  integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, port_name),
    UNIQUE (node_id, local_port)
);

-- Read model: written only by the projector.
CREATE TABLE service_status (
    service_id          uuid PRIMARY KEY,
    status              text NOT NULL,
    status_reason       text,
    connection_info     jsonb,
    replication         jsonb,                          -- PostgreSQL read replicas' state
    observed_generation bigint NOT NULL DEFAULT 0,
    requested_generation bigint NOT NULL DEFAULT 0,  -- newest user request it has seen
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE projector_offsets (
    projection  text PRIMARY KEY,
    last_seq    bigint NOT NULL
);

-- Transactional outbox: rows written with the desired state, relayed to JetStream.
CREATE TABLE outbox (
    id            bigserial PRIMARY KEY,
    msg_id        text NOT NULL UNIQUE,
    subject       text NOT NULL,
    message_type  text NOT NULL,
    payload       bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    token_hash   text NOT NULL UNIQUE,
    permissions  text[] NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz
);

CREATE TABLE idempotency_keys (
    token_id     uuid NOT NULL,
    key          text NOT NULL,
    method       text NOT NULL,
    path         text NOT NULL,
    status_code  integer,
    body         jsonb,
    headers      jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (token_id, key)
);

CREATE TABLE audit_log (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text NOT NULL,
    action   text NOT NULL,
    target   text,
    ip       text,
    details  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_target ON audit_log (target, at);

-- The installation CA; its key is encrypted with the master key.
CREATE TABLE certificate_authority (
    id              integer PRIMARY KEY CHECK (id = 1),
    cert_pem        text NOT NULL,
    key_ciphertext  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
