-- When this installation put the backup into its catalogue. Retention counts from the later of
-- it and the backup's end: a backup imported by `temps backup restore-service` carries the old
-- installation's times, and must not be expired (deleted from the bucket) the moment it arrives.
ALTER TABLE backups ADD COLUMN registered_at timestamptz;
UPDATE backups SET registered_at = requested_at;
ALTER TABLE backups ALTER COLUMN registered_at SET DEFAULT now(),
    ALTER COLUMN registered_at SET NOT NULL;
-- When the backup was last restored in place into its own service (the health projection sets
-- it on RestoreCompleted): a failed verification older than that no longer degrades the
-- service, whose data was replaced since.
ALTER TABLE backups ADD COLUMN restored_in_place_at timestamptz;
