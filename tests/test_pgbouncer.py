"""`cachesvc pgbouncer config` renders a configuration that a real PgBouncer runs."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import ClientCursor

from cachesvc.localstack import LocalPgBouncer, LocalStack, free_port
from tests.harness import as_user, http_client, wait_until


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cachesvc", *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@contextlib.contextmanager
def cli_bouncer(stack: LocalStack, **settings: str) -> Iterator[tuple[int, Path, subprocess.CompletedProcess]]:
    """A PgBouncer on a new port, configured by the CLI (not by the harness)."""
    port = free_port()
    env = stack.env() | {
        "CACHESVC_DATABASE_URL": app_url(stack, port),
        "CACHESVC_MONITOR_DATABASE_URL": f"postgresql://cachesvc_monitor:{stack.passwords['cachesvc_monitor']}@127.0.0.1:{port}/cachesvc",
    } | {f"CACHESVC_{k.upper()}": v for k, v in settings.items()}
    directory = stack.home / f"bouncer-{port}"
    result = run_cli("pgbouncer", "config", "--out", str(directory), env=env)
    assert result.returncode == 0, result.stderr
    bouncer = LocalPgBouncer(directory, port)
    bouncer.start()
    try:
        yield port, directory, result
    finally:
        bouncer.stop()


def app_url(stack: LocalStack, port: int) -> str:
    return f"postgresql://cachesvc_app:{stack.passwords['cachesvc_app']}@127.0.0.1:{port}/cachesvc"


def console(stack: LocalStack, port: int, command: str) -> list[dict]:
    """A SHOW command on PgBouncer's admin console (simple query protocol only)."""
    url = f"postgresql://cachesvc_monitor:{stack.passwords['cachesvc_monitor']}@127.0.0.1:{port}/pgbouncer"
    with psycopg.connect(url, autocommit=True, cursor_factory=ClientCursor) as conn:
        cur = conn.execute(command)
        cols = [d.name for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]


@pytest.fixture
def second_bouncer(stack):
    with cli_bouncer(stack) as bouncer:
        yield bouncer


@pytest.fixture
def one_server(stack):
    """A PgBouncer whose pool for the app holds ONE server connection: clients taking turns
    run their transactions on the same backend (each test checks the backend pid too)."""
    with cli_bouncer(stack, pgbouncer_pool_size="1") as (port, _, _):
        yield port


def app_servers(stack: LocalStack, port: int) -> list[int]:
    """Backend pids of the server connections PgBouncer holds for the app's pool."""
    return [s["remote_pid"] for s in console(stack, port, "SHOW SERVERS")
            if s["database"] == "cachesvc" and s["user"] == "cachesvc_app"]


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
    pools = console(stack, port, "SHOW POOLS")
    app_pools = [p for p in pools if p["database"] == "cachesvc" and p["user"] == "cachesvc_app"]
    assert app_pools and app_pools[0]["pool_mode"] == "transaction"


def test_wrong_password_and_unknown_user_are_refused(stack, second_bouncer):
    port, _, _ = second_bouncer
    for user, password in (("cachesvc_app", "not-the-password"), ("cachesvc_admin", stack.passwords["cachesvc_admin"])):
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(f"postgresql://{user}:{password}@127.0.0.1:{port}/cachesvc", connect_timeout=5)


# PgBouncer sends these to the server itself (SET, when a client's value differs): not ours.
TRACKED_BY_PGBOUNCER = {"client_encoding", "datestyle", "timezone", "standard_conforming_strings", "application_name"}
SESSION_STATE = (
    "SELECT pg_backend_pid(), current_setting('cachesvc.user_id', true), current_setting('statement_timeout'),"
    " array(SELECT name FROM pg_settings WHERE source = 'session' AND lower(name) <> ALL(%s) ORDER BY name)"
)


def session_state(port: int, stack: LocalStack) -> tuple[int, str | None, str, list[str]]:
    """(backend pid, cachesvc.user_id, statement_timeout, settings SET for the session), from a new client."""
    with psycopg.connect(app_url(stack, port), prepare_threshold=None, autocommit=True) as conn:
        return conn.execute(SESSION_STATE, (list(TRACKED_BY_PGBOUNCER),)).fetchone()


def test_a_session_set_leaks_to_the_next_client_but_transaction_local_settings_do_not(stack, one_server):
    """Why the service sets its context only transaction-locally.

    In transaction mode PgBouncer hands the server connection to the next client after each
    transaction and resets nothing (``server_reset_query`` applies to session mode only): a
    session ``SET`` stays on that backend and the next client, another connection, sees it.
    ``set_config(..., true)`` ends with its transaction, so the next client sees none of it.
    With one server connection in the pool both clients get the same backend, as its pid shows.
    """
    def client() -> psycopg.Connection:
        return psycopg.connect(app_url(stack, one_server), prepare_threshold=None, autocommit=True)

    user = str(uuid.uuid4())
    with client() as a, client() as b:  # two client connections, both open throughout
        a.execute("SET cachesvc.leak = 'from-a'")  # a session SET, outside any transaction
        (pid,) = a.execute("SELECT pg_backend_pid()").fetchone()
        assert b.execute("SELECT pg_backend_pid(), current_setting('cachesvc.leak', true)").fetchone() == (pid, "from-a")
        b.execute("RESET cachesvc.leak")
        with a.transaction():
            a.execute("SELECT set_config('cachesvc.user_id', %s, true), set_config('statement_timeout', '1234', true)",
                      (user,))
            assert a.execute("SELECT current_setting('cachesvc.user_id'), current_setting('statement_timeout')"
                             ).fetchone() == (user, "1234ms")
        pid_b, user_id, statement_timeout = b.execute(
            "SELECT pg_backend_pid(), current_setting('cachesvc.user_id', true), current_setting('statement_timeout')"
        ).fetchone()
    assert pid_b == pid  # the same backend again
    assert (user_id or "", statement_timeout) == ("", "5s")  # no user; the role's statement_timeout
    assert app_servers(stack, one_server) == [pid]


def test_the_service_leaves_no_session_state_on_the_server_connection(stack, tokens, one_server, start_service):
    """What the service relies on: every path (warm-up, reads, writes, lookups, statistics,
    erasure, the counter flush) sets its context with ``set_config(..., true)`` inside its
    transaction and never with a session ``SET``. Run through a PgBouncer with one server
    connection, every transaction of the service lands on one backend; a client that comes
    after finds that backend with no user and nothing SET for the session."""
    service = start_service(database_url=app_url(stack, one_server), pool_size="2", flush_interval_s="0.2",
                            rate_limit_per_s="0")
    user, erased = uuid.uuid4(), uuid.uuid4()
    with http_client(service, headers=as_user(tokens, user)) as http:
        assert http.put("/v1/cache/chapter/k", json={"content": "x", "tokenCount": 5}).status_code == 201
        assert http.get("/v1/cache/chapter/k").status_code == 200
        assert http.get("/v1/cache/chapter/absent").status_code == 404
        lookup = http.post("/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": "k"}]})
        assert lookup.status_code == 200 and lookup.json()["results"][0]["hit"] is True
        wait_until(lambda: http.get("/v1/cache/stats").json()["hits"] == 2, 10, "the counter flush")
        assert_no_session_state(stack, one_server)
        assert http.delete("/v1/cache/chapter/k").status_code == 204
        h = as_user(tokens, erased)
        assert http.put("/v1/cache/chapter/k", json={"content": "y"}, headers=h).status_code == 201
        assert http.delete("/v1/cache", headers=h).status_code == 200
    service.stop()  # its shutdown (the final flush) leaves no session state either
    assert_no_session_state(stack, one_server)


def assert_no_session_state(stack: LocalStack, port: int) -> None:
    pid, user_id, statement_timeout, set_for_session = session_state(port, stack)
    assert app_servers(stack, port) == [pid]  # one backend ran every transaction so far
    assert (user_id or "", statement_timeout, set_for_session) == ("", "5s", [])
