-- The schema of the feature tables: one table per feature group, one row per entity key
-- (a single-column primary key). Owned by cache_maintainer, which creates and replaces
-- the tables (`cachesvc features load` / `demo`); the service discovers them at start-up.
-- Created by the migrating role (creating a schema needs CREATE on the database, which
-- cache_maintainer does not have); a schema that already exists is adopted.
CREATE SCHEMA IF NOT EXISTS features;
ALTER SCHEMA features OWNER TO cache_maintainer;
COMMENT ON SCHEMA features IS 'cachesvc feature tables: one row per entity key, single-column primary key';
