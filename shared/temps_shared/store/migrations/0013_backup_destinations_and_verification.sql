-- Where backups go besides the built-in store (PUT /api/backup-destination; `temps backup
-- restore-service` registers the bucket it restores from). At most one is active: new backups
-- go there; none active means the built-in store. The secret key is encrypted with the master
-- key (bound to the row's id).
CREATE TABLE backup_destinations (
    id                 uuid PRIMARY KEY,
    endpoint           text NOT NULL,
    bucket             text NOT NULL,
    region             text NOT NULL DEFAULT 'us-east-1',
    access_key_id      text NOT NULL,
    secret_ciphertext  text NOT NULL,
    path_style         boolean NOT NULL DEFAULT true,
    ca_pem             text,
    active             boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX backup_destinations_one_active ON backup_destinations (active) WHERE active;

-- Each backup names its destination (NULL: the built-in store), what asked for it, and the
-- outcome of its test restore.
ALTER TABLE backups
    ADD COLUMN destination_id uuid REFERENCES backup_destinations (id),
    ADD COLUMN trigger text NOT NULL DEFAULT 'manual',
    ADD COLUMN verify_state text
        CHECK (verify_state IN ('pending', 'verified', 'verification_failed')),
    ADD COLUMN verify_reason text,
    ADD COLUMN verified_at timestamptz;
