-- When this installation put the backup into its catalogue. Retention counts from the later of
-- it and the backup's end: a backup imported by `temps backup restore-service` carries the old
-- installation's times, and must not be expired (deleted from the bucket) the moment it arrives.
ALTER TABLE backups ADD COLUMN registered_at timestamptz;
UPDATE backups SET registered_at = requested_at;
ALTER TABLE backups ALTER COLUMN registered_at SET DEFAULT now(),
    ALTER COLUMN registered_at SET NOT NULL;
