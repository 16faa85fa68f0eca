"""Migration 0002: schema `features`, its privileges, hot keys, pg_prewarm; and its downgrade."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import errors

from cachesvc import migrations
from cachesvc.localstack import SUPERUSER
from tests.harness import connect, prewarm_stack, scratch_database
from tests.harness import maintainer

DB = "cachesvc_features_migrations"


@pytest.fixture(scope="module")
def stack():
    """This module's stack, on a PostgreSQL with pg_prewarm (tests.harness.prewarm_stack)."""
    with prewarm_stack("cachesvc-features-schema-") as s:
        yield s


@pytest.fixture
def fresh_db(stack):
    with scratch_database(stack, DB) as url:
        yield url


def test_schema_owner_and_privileges(admin):
    owner = admin.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'features'").fetchone()[0]
    assert owner == "cache_maintainer"
    usage = admin.execute(
        "SELECT has_schema_privilege('cache_app', 'features', 'USAGE'), has_schema_privilege('cache_monitor', 'features', 'USAGE'),"
        " has_schema_privilege('cache_app', 'features', 'CREATE')"
    ).fetchone()
    assert usage == (True, True, False)
    schema = admin.execute(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE extname = 'pg_prewarm'"
    ).fetchone()
    assert schema == ("extensions",)


def test_tables_the_maintainer_creates_are_readable_by_the_service_only(stack, admin):
    with maintainer(stack) as conn:
        conn.execute("CREATE TABLE features.ft_privileges (k bigint PRIMARY KEY, v integer)")
        conn.execute("INSERT INTO features.ft_privileges VALUES (1, 10)")
    admin.execute("CREATE TABLE features.ft_by_superuser (k bigint PRIMARY KEY)")
    try:
        with connect(stack, "cachesvc_app", autocommit=True) as app:
            assert app.execute("SELECT v FROM features.ft_privileges WHERE k = 1").fetchone() == (10,)
            # The forbidden paths: no writes, no new tables, nothing the maintainer did not create.
            for statement in (
                "INSERT INTO features.ft_privileges VALUES (2, 20)",
                "UPDATE features.ft_privileges SET v = 0",
                "DELETE FROM features.ft_privileges",
                "TRUNCATE features.ft_privileges",
                "CREATE TABLE features.ft_mine (k int PRIMARY KEY)",
                "SELECT * FROM features.ft_by_superuser",
            ):
                with pytest.raises(errors.InsufficientPrivilege):
                    app.execute(statement)
        with connect(stack, "cachesvc_monitor", autocommit=True) as monitor:
            with pytest.raises(errors.InsufficientPrivilege):
                monitor.execute("SELECT * FROM features.ft_privileges")
    finally:
        admin.execute("DROP TABLE features.ft_privileges, features.ft_by_superuser")


def test_downgrade_refuses_to_drop_loaded_tables_then_round_trips(fresh_db):
    migrations.upgrade(fresh_db)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("SET ROLE cache_maintainer")
        conn.execute("CREATE TABLE features.ft_loaded (k bigint PRIMARY KEY)")
    with pytest.raises(Exception, match="schema features still holds ft_loaded"):
        migrations.downgrade(fresh_db, "0001")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (migrations.head_revision(),)
        conn.execute("DROP TABLE features.ft_loaded")
    migrations.downgrade(fresh_db, "0001")
    with psycopg.connect(fresh_db) as conn:
        gone = conn.execute(
            "SELECT to_regnamespace('features'), to_regclass('public.feature_hot_keys'),"
            " to_regprocedure('record_feature_hot_keys(text[], bigint[])')"
        ).fetchone()
        assert gone == (None, None, None)
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == ("0001",)
    migrations.upgrade(fresh_db)
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT to_regclass('public.feature_hot_keys') IS NOT NULL").fetchone() == (True,)


def test_migration_without_superuser_skips_pg_prewarm_with_a_warning(stack, fresh_db):
    """A CREATEROLE migrating role that may not create the extension still migrates."""
    with psycopg.connect(stack.url(SUPERUSER, dbname=DB), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS ft_migrator")
        conn.execute("CREATE ROLE ft_migrator LOGIN CREATEROLE PASSWORD 'ft-migrator-pw'")
        conn.execute(f"GRANT CREATE ON DATABASE {DB} TO ft_migrator")
        conn.execute("GRANT CREATE ON SCHEMA public TO ft_migrator WITH GRANT OPTION")
    url = f"postgresql://ft_migrator:ft-migrator-pw@127.0.0.1:{stack.pg_port}/{DB}"
    try:
        migrations.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (migrations.head_revision(),)
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'pg_prewarm'").fetchone() == (0,)
            assert conn.execute("SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = 'features'").fetchone() == ("cache_maintainer",)
    finally:
        with psycopg.connect(stack.url(SUPERUSER, dbname=DB), autocommit=True) as conn:
            conn.execute("DROP OWNED BY ft_migrator")
            conn.execute("DROP ROLE ft_migrator")
