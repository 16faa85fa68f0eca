"""The test harness: one real PostgreSQL + PgBouncer per test session, on free ports.

Nothing is mocked. The servers are started by ``cachesvc.localstack`` (the same code that
``scripts/dev`` and the benchmarks use), migrated to head, with one login per group role.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from cachesvc.localstack import SUPERUSER, LocalStack, ServiceProcess


@contextlib.contextmanager
def throwaway_stack(prefix: str = "cachesvc-test-"):
    """A started stack in a fresh directory, stopped and removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    s = LocalStack.throwaway(home)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def stack():
    with throwaway_stack() as s:
        yield s


@pytest.fixture
def admin(stack):
    """Superuser, direct, autocommit: for arranging data behind RLS's back."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        yield conn


def connect(stack: LocalStack, user: str, *, direct: bool = False, **kw) -> psycopg.Connection:
    """A login through PgBouncer (transaction mode: prepared statements off), or direct."""
    if not direct:
        kw.setdefault("prepare_threshold", None)
    return psycopg.connect(stack.url(user, direct=direct), **kw)


@pytest.fixture
def app_conn(stack):
    with connect(stack, "cachesvc_app") as conn:
        yield conn


@pytest.fixture
def monitor_conn(stack):
    with connect(stack, "cachesvc_monitor", autocommit=True) as conn:
        yield conn


@pytest.fixture
def maintainer_conn(stack):
    with connect(stack, "cachesvc_maintainer", direct=True, autocommit=True) as conn:
        yield conn


@contextlib.contextmanager
def acting_as(conn: psycopg.Connection, user_id: uuid.UUID | str | None):
    """One explicit transaction with the user set transaction-locally, as the service does."""
    with conn.transaction():
        if user_id is not None:
            conn.execute("SELECT set_config('cachesvc.user_id', %s, true)", (str(user_id),))
        yield conn


def insert_entry(conn: psycopg.Connection, user_id, content_type="chapter", key=None, *, ttl="1 hour", created_at=None):
    """Insert one cache row (RLS applies to ``conn``'s role); returns (id, created_at)."""
    key = key or f"k-{uuid.uuid4()}"
    return conn.execute(
        """
        INSERT INTO infinite_pages_cache_partitioned
               (user_id, content_type, cache_key, content, token_count, created_at, expires_at)
        VALUES (%(u)s, %(ct)s, %(k)s, '{"text": "hello"}', 42,
                coalesce(%(created)s, now()), coalesce(%(created)s, now()) + %(ttl)s::interval)
        RETURNING id, created_at
        """,
        {"u": user_id, "ct": content_type, "k": key, "ttl": ttl, "created": created_at},
    ).fetchone()


class LiveService(ServiceProcess):
    """`cachesvc serve` in a subprocess, on a free port, against the stack; ready when returned."""

    def __init__(self, stack: LocalStack, log_path: Path, **settings: str) -> None:
        super().__init__(stack, log_path, **settings)
        self.log_path = log_path
        self.wait_ready(30)


@pytest.fixture(scope="session")
def service(stack, tmp_path_factory):
    """The live service for the whole session (counters flushed every 0.2 s)."""
    live = LiveService(stack, tmp_path_factory.mktemp("service") / "service.log", flush_interval_s="0.2")
    yield live
    live.stop()


@pytest.fixture(scope="session")
def tokens(stack):
    """Make tokens signed with the stack's secret: tokens(user) / tokens(service=True)."""
    return token_maker(stack)


def token_maker(stack: LocalStack):
    """tokens(user) / tokens(service=True), signed with ``stack``'s own secret (each stack has one)."""
    from cachesvc import auth

    secret = stack.settings().jwt_secret

    def make(user: uuid.UUID | str | None = None, *, service: bool = False, **kw) -> str:
        if service:
            return auth.mint(secret, sub="test-service", role=auth.SERVICE_ROLE, **kw)
        return auth.mint(secret, sub=str(user), **kw)

    return make
