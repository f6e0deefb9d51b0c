-- The admin API lists grants a page at a time by key (grant ids are UUID v7, so by id is
-- by age), per client or per user: these indexes answer a page deep in the list as fast
-- as the first. They replace the single-column ones, which their prefixes cover.
CREATE INDEX IF NOT EXISTS grants_client_id ON grants (client_id, grant_id);
CREATE INDEX IF NOT EXISTS grants_user_id ON grants (user_id, grant_id) WHERE user_id IS NOT NULL;
DROP INDEX IF EXISTS grants_client;
DROP INDEX IF EXISTS grants_user;
