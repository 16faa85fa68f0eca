"""Login users for the three group roles the migrations create.

The group roles carry the privileges; a login user is a member that inherits them. Per-role
settings (``ALTER ROLE … SET``) apply only to the role that logs in, never through
membership, so they are set here, on each login, rather than on the groups.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

GROUPS = ("cache_app", "cache_maintainer", "cache_monitor")

# Settings each kind of login starts every session with. For the application login these
# are what survives PgBouncer's transaction mode: role settings are applied by the server
# at login, so every pooled server connection carries them.
LOGIN_SETTINGS: dict[str, dict[str, str]] = {
    "cache_app": {
        "statement_timeout": "5s",
        "idle_in_transaction_session_timeout": "10s",
        "lock_timeout": "2s",
        "TimeZone": "UTC",
        # Measured: short multi-table lookups ran ~2x slower with parallel workers.
        "max_parallel_workers_per_gather": "0",
    },
    "cache_maintainer": {
        "lock_timeout": "5s",
        "idle_in_transaction_session_timeout": "60s",
    },
    "cache_monitor": {
        "statement_timeout": "30s",
        "default_transaction_read_only": "on",
    },
}


def create_login(conn: psycopg.Connection, name: str, group: str, password: str | None) -> bool:
    """Create (or update) login ``name`` as a member of ``group``; True when newly created.

    The login is never a superuser, never bypasses RLS and owns nothing; a password of
    None keeps the current one (or leaves the login password-less, e.g. for peer auth).
    """
    if group not in GROUPS:
        raise ValueError(f"group must be one of {', '.join(GROUPS)}, not {group!r}")
    ident = sql.Identifier(name)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    attrs = sql.SQL("LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS INHERIT")
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    stmt = sql.SQL("{} {} {}").format(verb, ident, attrs)
    if password is not None:
        stmt = sql.SQL("{} PASSWORD {}").format(stmt, sql.Literal(password))
    conn.execute(stmt)
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), ident))
    for key, value in LOGIN_SETTINGS[group].items():
        conn.execute(sql.SQL("ALTER ROLE {} SET {} = {}").format(ident, sql.Identifier(key), sql.Literal(value)))
    return not exists


def create_replication_login(conn: psycopg.Connection, name: str, password: str) -> bool:
    """Create (or update) a login that may stream WAL to a standby and do nothing else.

    REPLICATION lets it connect to the ``replication`` pseudo-database (``pg_basebackup``,
    ``primary_conninfo``); it is a member of no group, so it reads and writes no table.
    """
    ident = sql.Identifier(name)
    exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    attrs = sql.SQL("LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS")
    conn.execute(sql.SQL("{} {} {} PASSWORD {}").format(verb, ident, attrs, sql.Literal(password)))
    return not exists
