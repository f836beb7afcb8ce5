-- Resync: when each running service's members were last checked against Docker, and the
-- backoff after failed repairs (so a crash-looping engine is not hammered).
CREATE TABLE resync_schedule (
    service_id  uuid PRIMARY KEY REFERENCES services (id) ON DELETE CASCADE,
    next_at     timestamptz NOT NULL DEFAULT now(),
    not_before  timestamptz NOT NULL DEFAULT now(),
    failures    integer NOT NULL DEFAULT 0
);

-- The primary data volumes the provisioner created: one that existed and is gone was lost, and
-- must not silently come back empty.
CREATE TABLE service_volumes (
    service_id  uuid NOT NULL REFERENCES services (id) ON DELETE CASCADE,
    volume      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service_id, volume)
);

-- Services provisioned before this table existed: their primary volumes exist (ids.volume_name).
INSERT INTO service_volumes (service_id, volume)
SELECT s.id, 'temps-' || s.service_type || '-' || s.name || '-data'
  FROM services s JOIN service_status st ON st.service_id = s.id
 WHERE NOT s.purged AND st.status IN ('operational', 'degraded', 'down', 'stopped')
ON CONFLICT DO NOTHING;
