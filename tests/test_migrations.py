"""Migrations: up, down and up again on a fresh database; every SQL file they load exists."""

from __future__ import annotations

import ast
import importlib.util
import re

import psycopg
import pytest

from cachesvc import migrations, sqlfiles
from tests.harness import scratch_database

VERSIONS = migrations.PROJECT_ROOT / "alembic" / "versions"
OBJECTS = {
    "infinite_pages_cache_partitioned": "r",
    "cache_audit_log": "r",
    "cache_access_stats": "r",
    "cache_performance_metrics": "v",
    "partition_health_metrics": "v",
    "cache_connection_metrics": "v",
    "user_cache_analytics": "v",
    "feature_table_health": "v",
}
FUNCTIONS = [
    "create_monthly_cache_partition",
    "cleanup_expired_cache_entries_production",
    "ensure_monthly_partitions",
    "cachesvc_current_user_id",
]


def migration_modules():
    for path in sorted(VERSIONS.glob("*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield path, module


def present(conn) -> dict[str, bool]:
    found = {name: False for name in [*OBJECTS, *FUNCTIONS]}
    for name in OBJECTS:
        found[name] = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",)).fetchone()[0]
    for name in FUNCTIONS:
        found[name] = conn.execute("SELECT count(*) > 0 FROM pg_proc WHERE proname = %s", (name,)).fetchone()[0]
    return found


@pytest.fixture
def fresh_db(stack):
    name = "cachesvc_migrations"
    with scratch_database(stack, name) as url:
        yield name, url


def test_upgrade_downgrade_upgrade(fresh_db):
    _, url = fresh_db
    migrations.upgrade(url)
    with psycopg.connect(url) as conn:
        assert all(present(conn).values())
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == migrations.head_revision()
        parts_after_first = conn.execute("SELECT count(*) FROM partition_health_metrics").fetchone()[0]
    migrations.downgrade(url, "base")
    with psycopg.connect(url) as conn:
        assert not any(present(conn).values())
        assert conn.execute("SELECT count(*) FROM alembic_version").fetchone()[0] == 0
        leftovers = conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace"
            " AND relname LIKE ANY (ARRAY['infinite_pages_cache%%', 'cache_%%'])"
        ).fetchone()[0]
        assert leftovers == 0
    migrations.upgrade(url)
    with psycopg.connect(url) as conn:
        assert all(present(conn).values())
        assert conn.execute("SELECT count(*) FROM partition_health_metrics").fetchone()[0] == parts_after_first


def test_objects_are_owned_by_maintainer(fresh_db):
    _, url = fresh_db
    migrations.upgrade(url)
    with psycopg.connect(url) as conn:
        owners = conn.execute(
            "SELECT DISTINCT relowner::regrole::text FROM pg_class"
            " WHERE relnamespace = 'public'::regnamespace AND relname <> 'alembic_version'"
            " AND relname NOT LIKE 'alembic_version%%'"
        ).fetchall()
        fn_owners = conn.execute(
            "SELECT DISTINCT proowner::regrole::text FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        ).fetchall()
    assert owners == [("cache_maintainer",)]
    assert fn_owners == [("cache_maintainer",)]


def test_migration_sql_files_exist_and_are_versioned():
    listed: set[str] = set()
    for path, module in migration_modules():
        files = getattr(module, "SQL_FILES", None)
        assert files is not None, f"{path.name} does not declare SQL_FILES"
        for name in files:
            assert re.fullmatch(r"[a-z_]+/[a-z0-9_]+\.v\d+\.sql", name), f"{path.name}: {name} is not <dir>/<object>.v<N>.sql"
            assert sqlfiles.path(name).is_file(), f"{path.name} loads sql/{name}, which does not exist"
        # Any literal sqlfiles.run("...") in the source must be declared too.
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "run" and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant):
                    assert arg.value in files, f"{path.name} runs {arg.value} without listing it in SQL_FILES"
        listed.update(files)
    # No orphan: every object file (runbook checks aside) is loaded by some migration.
    on_disk = {
        str(p.relative_to(sqlfiles.SQL_DIR)) for p in sqlfiles.SQL_DIR.rglob("*.sql") if p.parts[-2] != "checks"
    }
    assert on_disk - listed == set()


def test_single_head():
    assert migrations.head_revision()
