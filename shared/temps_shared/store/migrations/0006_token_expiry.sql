-- Tokens may carry an expiry (NULL: never). An expired token is refused, and an SSE stream
-- opened with it ends.
ALTER TABLE api_tokens ADD COLUMN expires_at timestamptz;

-- Projects and environments can be deleted (refused while a link is active). A revoked link's
-- record outlives its project: the provisioner keeps converging that link's user to revoked, so
-- the record must stay, and the foreign key to projects would forbid the delete. The gateway
-- serialises link creation against project deletion with row locks on the project instead.
ALTER TABLE service_links DROP CONSTRAINT IF EXISTS service_links_project_id_fkey;
