"""SECURITY DEFINER functions cannot be steered through pg_temp (issue 17, item 2).

Where a function's search_path does not name pg_temp, PostgreSQL searches it first for tables,
so a login's temporary `pg_class` could shadow the catalog inside a function running with the
maintainer's rights. Two walls: every function pins pg_temp last, and the service's logins may
not create temporary tables at all. Each is tried with the other one taken down.
"""

from __future__ import annotations

import contextlib
import datetime as dt

import psycopg
import pytest
from psycopg import errors

from cachesvc.localstack import DATABASE
from tests.harness import connect, free_month

# Functions that set no search_path: SQL one-liners inlined into the row-level security
# policies (a SET clause would stop the inlining), reading only settings, not tables.
UNPINNED = {"cachesvc_current_user_id", "cachesvc_current_user_ids"}


def project_functions(admin) -> list[tuple[str, bool, list[str] | None]]:
    return admin.execute(
        "SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig FROM pg_proc p"
        " WHERE p.proowner = 'cache_maintainer'::regrole ORDER BY 1"
    ).fetchall()


def search_path(config: list[str] | None) -> list[str] | None:
    for setting in config or []:
        if setting.startswith("search_path="):
            return [part.strip() for part in setting.removeprefix("search_path=").split(",")]
    return None


def test_every_definer_pins_search_path_with_pg_temp_last(admin):
    functions = project_functions(admin)
    definers = [name for name, definer, _ in functions if definer]
    assert {"ensure_monthly_partitions(timestamp with time zone)", "cachesvc_begin_erasure()"} <= set(definers)
    assert any(name.startswith("record_cache_access(") for name in definers)
    for name, definer, config in functions:
        path = search_path(config)
        if path is None:
            assert not definer and name.split("(")[0] in UNPINNED, f"{name} sets no search_path"
            continue
        assert path[-1] == "pg_temp", f"{name}: search_path {path} does not end with pg_temp"
        assert path[0] == "pg_catalog" and "pg_temp" not in path[:-1], f"{name}: search_path {path}"


@pytest.mark.parametrize("direct", [False, True], ids=["pgbouncer", "direct"])
def test_app_login_cannot_create_temporary_tables_or_schema_objects(stack, admin, direct):
    with connect(stack, "cachesvc_app", direct=direct) as conn:
        with pytest.raises(errors.InsufficientPrivilege, match="temporary tables"):
            conn.execute("CREATE TEMP TABLE pg_class (oid oid) ON COMMIT DROP")
        conn.rollback()
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE public.pg_class (oid oid)")
        conn.rollback()
    creatable = admin.execute(
        "SELECT nspname FROM pg_namespace WHERE has_schema_privilege('cache_app', oid, 'CREATE')"
    ).fetchall()
    assert creatable == []


@contextlib.contextmanager
def temp_allowed(admin, login: str):
    """The first wall taken down: the login may create temporary tables."""
    admin.execute(f"GRANT TEMPORARY ON DATABASE {DATABASE} TO {login}")
    try:
        yield
    finally:
        admin.execute(f"REVOKE TEMPORARY ON DATABASE {DATABASE} FROM {login}")


def shadow_catalog_and_ensure(conn: psycopg.Connection, at: dt.datetime) -> None:
    """The attack, in one transaction (so it also works through PgBouncer): temp tables named
    pg_class / pg_namespace that place the cache and audit parents in schema `features`, then
    the self-healing write path for a month with no partition yet."""
    with conn.transaction():
        conn.execute("CREATE TEMP TABLE pg_namespace (oid oid, nspname name) ON COMMIT DROP")
        conn.execute('CREATE TEMP TABLE pg_class (oid oid, relnamespace oid, relkind "char") ON COMMIT DROP')
        conn.execute(
            "INSERT INTO pg_temp.pg_namespace SELECT oid, nspname FROM pg_catalog.pg_namespace WHERE nspname = 'features'"
        )
        conn.execute(
            "INSERT INTO pg_temp.pg_class"
            " SELECT c.oid, n.oid, 'p' FROM pg_catalog.pg_class c, pg_catalog.pg_namespace n"
            " WHERE c.relname IN ('infinite_pages_cache_partitioned', 'cache_audit_log')"
            "   AND c.relnamespace = 'public'::regnamespace AND n.nspname = 'features'"
        )
        conn.execute("GRANT SELECT ON pg_temp.pg_class, pg_temp.pg_namespace TO PUBLIC")
        conn.execute("SELECT ensure_monthly_partitions(%s)", (at,))


def relations(admin) -> set[tuple[str, str]]:
    return set(admin.execute(
        "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast%%'"
    ).fetchall())


@pytest.mark.parametrize("direct", [False, True], ids=["pgbouncer", "direct"])
def test_shadowed_catalog_cannot_steer_partition_creation(stack, admin, direct):
    at = free_month(admin)
    suffix = at.strftime("_y%Ym%m")
    expected = {f"infinite_pages_cache{suffix}", f"cache_audit_log{suffix}"}
    before = relations(admin)
    try:
        with temp_allowed(admin, "cachesvc_app"), connect(stack, "cachesvc_app", direct=direct) as conn:
            shadow_catalog_and_ensure(conn, at)
        new = relations(admin) - before
        # Only the month's two partitions, where they belong (plus their indexes, same names' prefix).
        assert {rel for schema, rel in new if schema != "public"} == set()
        assert {rel for _, rel in new if not any(rel.startswith(e) for e in expected)} == set()
        attached = admin.execute(
            "SELECT c.relname, i.inhparent::regclass::text, c.relrowsecurity, c.relforcerowsecurity"
            "  FROM pg_class c JOIN pg_inherits i ON i.inhrelid = c.oid"
            " WHERE c.relname = ANY(%s) AND c.relnamespace = 'public'::regnamespace ORDER BY 1",
            (sorted(expected),),
        ).fetchall()
        assert attached == [
            (f"cache_audit_log{suffix}", "cache_audit_log", True, True),
            (f"infinite_pages_cache{suffix}", "infinite_pages_cache_partitioned", True, True),
        ]
        in_features = admin.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'features'::regnamespace"
            " AND (relname LIKE 'infinite_pages_cache%%' OR relname LIKE 'cache_audit_log%%')"
        ).fetchone()[0]
        assert in_features == 0
    finally:
        for name in expected:
            admin.execute(f"DROP TABLE IF EXISTS public.{name}")
