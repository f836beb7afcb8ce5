CREATE TABLE projects (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE project_environments (
    project_id  uuid NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, name)
);

-- Desired state of links (the gateway writes it; the provisioner converges the engines to it).
CREATE TABLE service_links (
    id            uuid PRIMARY KEY,
    service_id    uuid NOT NULL REFERENCES services (id),
    service_type  text NOT NULL,
    project_id    uuid NOT NULL REFERENCES projects (id),
    environment   text NOT NULL,
    key_prefix    text,
    secrets       text NOT NULL,  -- AES-256-GCM: {username, password, resource}
    desired_state text NOT NULL CHECK (desired_state IN ('active', 'revoked')),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
-- One service per type per project + environment.
CREATE UNIQUE INDEX service_links_one_per_type
    ON service_links (project_id, environment, service_type) WHERE desired_state = 'active';

-- Read model of links (the projector writes it).
CREATE TABLE link_status (
    link_id     uuid PRIMARY KEY,
    status      text NOT NULL,  -- pending | active | revoking | revoked
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Credential rotation in flight: the admin credentials before it, so the provisioner can log
-- in to set the new ones (cleared once applied).
ALTER TABLE services ADD COLUMN previous_secrets text;
