-- Kernel OOM kills seen on Docker's event stream, per member container (the host agent
-- counts them; a killed backend leaves its container running, so nothing else would tell).
CREATE TABLE member_oom_kills (
    container_name  text PRIMARY KEY,
    service_id      uuid,
    kills           integer NOT NULL DEFAULT 0,
    last_kill_at    timestamptz
);

-- Where each host agent's OOM event watch got to, so a restarted agent resumes there.
CREATE TABLE agent_event_marks (
    node_id     text PRIMARY KEY,
    oom_until   bigint NOT NULL
);
