"""The deployment check: is the database what the migrations and maintenance promise?

Every failed check is named in the output (``problems``) and makes the command exit 3.
"""

from __future__ import annotations

from psycopg import sql

from cachesvc import migrations
from cachesvc.maintenance.partitions import AUDIT, CACHE, add_months, db_today, existing, month_start, partition_name
from cachesvc.maintenance.runner import Run

RLS_TABLES = (CACHE, AUDIT, "cache_access_stats", "cache_leases")
EXPECTED_POLICIES = {
    CACHE: {"cache_app_read_rows", "cache_app_insert_own", "cache_app_update_own", "cache_app_delete_own",
            "cache_maintainer_all_rows"},
    AUDIT: {"cache_app_append_own", "cache_maintainer_all_rows"},
    "cache_access_stats": {"cache_app_own_rows", "cache_app_erase_own", "cache_maintainer_all_rows"},
    "cache_leases": {"cache_app_own_rows", "cache_maintainer_all_rows"},
}
VIEWS = (
    "cache_performance_metrics",
    "partition_health_metrics",
    "cache_connection_metrics",
    "user_cache_analytics",
    "feature_table_health",
)
FUNCTIONS = {
    "create_monthly_cache_partition(date)": False,
    "create_monthly_audit_partition(date)": False,
    "cleanup_expired_cache_entries_production(integer,integer)": False,
    "ensure_monthly_partitions(timestamp with time zone)": True,  # SECURITY DEFINER
    "record_cache_access(timestamp with time zone[],uuid[],text[],bigint[],bigint[],bigint[],numeric[],timestamp with time zone[],bigint[])": True,
    "record_cache_hits(bigint[],timestamp with time zone[],bigint[],timestamp with time zone[])": True,
    "cachesvc_begin_erasure()": True,
    "cachesvc_before_deadline(timestamp with time zone)": False,
    "cachesvc_current_user_id()": False,
    "cachesvc_current_user_ids()": False,
}
PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")


def verify(run: Run, ahead: int) -> None:
    checks: list[str] = []

    def check(name: str, ok: bool, problem: str) -> None:
        checks.append(name)
        if not ok:
            run.problems.append(problem)

    q = run.conn.execute

    head = migrations.head_revision()
    row = q("SELECT version_num FROM alembic_version").fetchone()
    check("migrations", row is not None and row[0] == head,
          f"schema revision is {row[0] if row else 'none'}, expected head {head}")

    partitions = {parent: existing(run, parent) for parent in (CACHE, AUDIT)}
    for table in RLS_TABLES:
        rls, forced = q("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = %s::regclass", (table,)).fetchone()
        check(f"rls:{table}", rls and forced, f"{table}: row-level security not enabled and forced")
        names = {r[0] for r in q("SELECT polname FROM pg_policy WHERE polrelid = %s::regclass", (table,))}
        missing = EXPECTED_POLICIES[table] - names
        check(f"policies:{table}", not missing, f"{table}: policies missing: {', '.join(sorted(missing))}")

    for parent, parts in partitions.items():
        parent_policies = _policies(run, parent)
        parent_indexes = q(
            "SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", (parent,)
        ).fetchone()[0]
        for name, start, _, pending in parts:
            rls, forced = q("SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = %s", (name,)).fetchone()
            check(f"rls:{name}", rls and forced, f"{name}: row-level security not enabled and forced")
            check(f"policies:{name}", _policies(run, name) == parent_policies,
                  f"{name}: policies differ from {parent}'s")
            for role in _app_roles(run):
                granted = [p for p in PRIVILEGES if q("SELECT has_table_privilege(%s, %s, %s)", (role, name, p)).fetchone()[0]]
                check(f"privileges:{name}:{role}", not granted,
                      f"{name}: {role} has {', '.join(granted)} on a partition (only the parent may be granted)")
            indexes = q("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass", (name,)).fetchone()[0]
            check(f"indexes:{name}", indexes >= parent_indexes,
                  f"{name}: {indexes} indexes, the parent has {parent_indexes}")
            check(f"default:{name}", start is not None, f"{name}: a DEFAULT partition exists (there should be none)")
            check(f"attached:{name}", not pending, f"{name}: a detach is pending (run `cachesvc partitions retire`)")

        this_month = month_start(db_today(run))
        have = {p[0] for p in parts}
        missing = [partition_name(parent, add_months(this_month, n)) for n in range(ahead + 1)]
        missing = [m for m in missing if m not in have]
        check(f"coverage:{parent}", not missing,
              f"{parent}: partitions missing for the next {ahead} months: {', '.join(missing)}")

    for role in _app_roles(run):
        bad = q("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0]
        check(f"bypassrls:{role}", not bad, f"{role} is a superuser or has BYPASSRLS")
        owns = q("SELECT count(*) FROM pg_class WHERE relowner = (SELECT oid FROM pg_roles WHERE rolname = %s)", (role,)).fetchone()[0]
        check(f"owns:{role}", owns == 0, f"{role} owns {owns} relations (RLS does not apply to owners)")

    for view in VIEWS:
        granted = q("SELECT has_table_privilege('cache_monitor', %s, 'SELECT')", (view,)).fetchone()[0]
        try:
            q(sql.SQL("SELECT * FROM {} LIMIT 1").format(sql.Identifier(view))).fetchall()
            readable = True
        except Exception as exc:  # reported as a problem, not raised
            readable = False
            run.problems.append(f"view {view} cannot be read: {exc}")
        check(f"view:{view}", granted and readable, f"view {view}: not readable by cache_monitor")

    for signature, definer in FUNCTIONS.items():
        row = q(
            "SELECT p.prosecdef, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE')"
            "  FROM pg_proc p WHERE p.oid = to_regprocedure(%s)",
            (signature,),
        ).fetchone()
        if row is None:
            check(f"function:{signature}", False, f"function {signature} is missing")
            continue
        prosecdef, config, public_exec = row
        ok = prosecdef == definer and (not definer or any(c.startswith("search_path=") and c.endswith(", pg_temp") for c in config or []))
        check(f"function:{signature}", ok, f"function {signature}: SECURITY DEFINER or search_path not as expected")
        if definer:
            check(f"function-public:{signature}", not public_exec, f"function {signature} is executable by PUBLIC")

    # The semantic cache is optional (pgvector): reported, never a problem.
    semantic = q(
        "SELECT count(*) > 0 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding' AND NOT attisdropped",
        (CACHE,),
    ).fetchone()[0]
    run.summary |= {"checks": len(checks), "failed": len(run.problems), "ahead": ahead, "semantic": semantic}


def _policies(run: Run, table: str) -> set[tuple]:
    return {
        tuple(r)
        for r in run.conn.execute(
            "SELECT policyname, cmd, roles::text, qual, with_check FROM pg_policies WHERE tablename = %s", (table,)
        )
    }


def _app_roles(run: Run) -> list[str]:
    """cache_app and every role that is a member of it (the service's logins)."""
    return [
        r[0]
        for r in run.conn.execute(
            """
            WITH RECURSIVE members(oid) AS (
                SELECT oid FROM pg_roles WHERE rolname = 'cache_app'
                UNION
                SELECT m.member FROM pg_auth_members m JOIN members ON m.roleid = members.oid
            )
            SELECT r.rolname FROM members JOIN pg_roles r ON r.oid = members.oid ORDER BY 1
            """
        )
    ]
