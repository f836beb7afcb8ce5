-- Redis: a link that shares its keyspace with other projects' links says so (issue 16). The
-- gateway refuses a link whose keys another project's link could reach, or that could reach
-- another project's keys, unless it sets this; existing links keep their access (false).
ALTER TABLE service_links ADD COLUMN IF NOT EXISTS shared_keyspace boolean NOT NULL DEFAULT false;
