-- This control plane's id: every Docker object it makes carries it (io.temps.installation), so
-- its garbage collector never touches another installation's objects on the same engine.
CREATE TABLE installation (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    singleton  boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO installation DEFAULT VALUES;
