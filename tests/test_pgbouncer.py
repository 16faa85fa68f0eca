"""`cachesvc pgbouncer config` renders a configuration that a real PgBouncer runs."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import psycopg
import pytest
from psycopg import ClientCursor

from cachesvc.localstack import LocalPgBouncer, free_port


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cachesvc", *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def second_bouncer(stack, tmp_path_factory):
    """A PgBouncer on a new port, configured by the CLI (not by the harness)."""
    port = free_port()
    env = stack.env() | {
        "CACHESVC_DATABASE_URL": f"postgresql://cachesvc_app:{stack.passwords['cachesvc_app']}@127.0.0.1:{port}/cachesvc",
        "CACHESVC_MONITOR_DATABASE_URL": f"postgresql://cachesvc_monitor:{stack.passwords['cachesvc_monitor']}@127.0.0.1:{port}/cachesvc",
    }
    directory = stack.home / f"bouncer-{port}"
    result = run_cli("pgbouncer", "config", "--out", str(directory), env=env)
    assert result.returncode == 0, result.stderr
    bouncer = LocalPgBouncer(directory, port)
    bouncer.start()
    yield port, directory, result
    bouncer.stop()


def test_config_to_stdout(stack):
    result = run_cli("pgbouncer", "config", env=stack.env())
    assert result.returncode == 0, result.stderr
    ini = result.stdout
    assert "pool_mode = transaction" in ini
    assert f"listen_port = {stack.bouncer_port}" in ini
    assert f"port={stack.pg_port} dbname=cachesvc" in ini
    assert "stats_users = cachesvc_monitor" in ini
    assert stack.passwords["cachesvc_app"] not in ini  # passwords live only in the auth file


def test_rendered_config_runs_a_real_pgbouncer(stack, second_bouncer):
    port, directory, _ = second_bouncer
    auth = directory / "userlist.txt"
    assert stat.S_IMODE(auth.stat().st_mode) == 0o600
    url = f"postgresql://cachesvc_app:{stack.passwords['cachesvc_app']}@127.0.0.1:{port}/cachesvc"
    with psycopg.connect(url, prepare_threshold=None) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("cachesvc_app",)
    # The admin console speaks only the simple query protocol.
    console = f"postgresql://cachesvc_monitor:{stack.passwords['cachesvc_monitor']}@127.0.0.1:{port}/pgbouncer"
    with psycopg.connect(console, autocommit=True, cursor_factory=ClientCursor) as conn:
        cur = conn.execute("SHOW POOLS")
        cols = [d.name for d in cur.description]
        pools = [dict(zip(cols, row)) for row in cur.fetchall()]
    app_pools = [p for p in pools if p["database"] == "cachesvc" and p["user"] == "cachesvc_app"]
    assert app_pools and app_pools[0]["pool_mode"] == "transaction"


def test_wrong_password_and_unknown_user_are_refused(stack, second_bouncer):
    port, _, _ = second_bouncer
    for user, password in (("cachesvc_app", "not-the-password"), ("cachesvc_admin", stack.passwords["cachesvc_admin"])):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://{user}:{password}@127.0.0.1:{port}/cachesvc", connect_timeout=5)


def test_session_settings_do_not_survive_transaction_mode(stack):
    """Why timeouts live on the role or in SET LOCAL: a session SET is lost between transactions."""
    with psycopg.connect(stack.url("cachesvc_app"), prepare_threshold=None, autocommit=True) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)  # from ALTER ROLE
        with conn.transaction():
            conn.execute("SET LOCAL statement_timeout = '1234ms'")
            assert conn.execute("SHOW statement_timeout").fetchone() == ("1234ms",)
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
