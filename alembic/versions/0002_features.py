"""Feature read path: schema `features`, hot keys kept across restarts, pg_prewarm.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

The schema and the extension are created by the migrating role (creating a schema needs
CREATE on the database; an untrusted extension needs a superuser, and is skipped with a
warning where the role may not). Everything else is created as, and owned by,
cache_maintainer. Tables that cache_maintainer creates in `features` are readable by
cache_app through default privileges; the service writes hot keys only through
record_feature_hot_keys().
"""

from cachesvc import sqlfiles

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Every sql/ file this migration loads, by exact versioned name, in order.
SQL_FILES = [
    "extensions/pg_prewarm.v1.sql",
    "schemas/features.v1.sql",
    "tables/feature_hot_keys.v1.sql",
    "functions/record_feature_hot_keys.v1.sql",
]

GRANTS = """
GRANT USAGE ON SCHEMA features TO cache_app, cache_monitor;
-- Feature tables that cache_maintainer creates (load, demo) are readable by the service.
ALTER DEFAULT PRIVILEGES FOR ROLE cache_maintainer IN SCHEMA features GRANT SELECT ON TABLES TO cache_app;

REVOKE ALL ON feature_hot_keys FROM PUBLIC;
REVOKE ALL ON FUNCTION record_feature_hot_keys(text[], bigint[]) FROM PUBLIC;
GRANT SELECT ON feature_hot_keys TO cache_app, cache_monitor;
GRANT EXECUTE ON FUNCTION record_feature_hot_keys(text[], bigint[]) TO cache_app;
"""

# Feature tables hold loaded data, not objects of this migration: a downgrade refuses to
# drop them rather than lose them silently.
REFUSE_IF_TABLES = """
DO $$
DECLARE
    found text;
BEGIN
    SELECT string_agg(c.relname, ', ' ORDER BY c.relname) INTO found
      FROM pg_class c
     WHERE c.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = 'features')
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f');
    IF found IS NOT NULL THEN
        RAISE EXCEPTION 'schema features still holds % ; drop or move them before downgrading', found
              USING ERRCODE = '2BP01';
    END IF;
END
$$;
"""


def upgrade() -> None:
    sqlfiles.run("extensions/pg_prewarm.v1.sql")
    sqlfiles.run("schemas/features.v1.sql")
    sqlfiles.execute("SET LOCAL ROLE cache_maintainer")
    sqlfiles.run("tables/feature_hot_keys.v1.sql")
    sqlfiles.run("functions/record_feature_hot_keys.v1.sql")
    sqlfiles.execute(GRANTS)
    sqlfiles.execute("RESET ROLE")


def downgrade() -> None:
    sqlfiles.execute(REFUSE_IF_TABLES)
    sqlfiles.execute(
        """
        DROP FUNCTION IF EXISTS record_feature_hot_keys(text[], bigint[]);
        DROP TABLE IF EXISTS feature_hot_keys;
        ALTER DEFAULT PRIVILEGES FOR ROLE cache_maintainer IN SCHEMA features REVOKE SELECT ON TABLES FROM cache_app;
        DROP SCHEMA IF EXISTS features;
        """
    )
