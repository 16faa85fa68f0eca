"""The test harness's fixtures: one real PostgreSQL + PgBouncer per test session, on free ports.

Nothing is mocked. The servers are started by ``cachesvc.localstack`` (the same code that
``scripts/dev`` and the benchmarks use), migrated to head, with one login per group role.
The plain helpers these fixtures are built on live in ``tests/harness.py``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cachesvc.localstack import SUPERUSER, LocalStack
from tests.harness import LiveService, Wait, connect, http_client, maintenance_env, running_service, throwaway_stack, token_maker


@pytest.fixture(scope="session")
def stack():
    with throwaway_stack() as s:
        yield s


@pytest.fixture
def admin(stack):
    """Superuser, direct, autocommit: for arranging data behind RLS's back."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        yield conn


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


@pytest.fixture(scope="session")
def service(stack, tmp_path_factory):
    """The live service for the whole session (counters flushed every 0.2 s)."""
    with running_service(stack, tmp_path_factory.mktemp("service") / "service.log", flush_interval_s="0.2") as live:
        yield live


@pytest.fixture
def http(service):
    """An HTTP client bound to the session's service."""
    with http_client(service) as client:
        yield client


@pytest.fixture
def start_service(request, tmp_path) -> Iterator[Callable[..., LiveService]]:
    """start_service(stack=None, *, log=None, wait="ready", timeout=30, **settings): a service
    of the test's own, on ``stack`` (default: the session's), with ``settings``
    (``pool_size=2`` is ``CACHESVC_POOL_SIZE=2``), returned once ready (``wait="alive"``: once
    it answers /healthz; ``"none"``: at once). Every service started is stopped when the test
    ends, whatever happened; one that will not stop fails the test with its log's tail."""
    with contextlib.ExitStack() as running:
        count = 0

        def start(stack: LocalStack | None = None, *, log: str | None = None, wait: Wait = "ready",
                  timeout: float = 30, **settings) -> LiveService:
            nonlocal count
            count += 1
            on = stack if stack is not None else request.getfixturevalue("stack")
            path = tmp_path / (log or f"service-{count}.log")
            return running.enter_context(running_service(on, path, wait=wait, timeout=timeout, **settings))

        yield start


@pytest.fixture(scope="session")
def tokens(stack):
    """Make tokens signed with the stack's secret: tokens(user) / tokens(service=True)."""
    return token_maker(stack)


@pytest.fixture
def maint_env(stack):
    """The environment of a maintenance command: the session stack, as cache_maintainer, direct."""
    return maintenance_env(stack)


@pytest.fixture
def dev_home() -> Iterator[Path]:
    """A fresh $CACHESVC_HOME for a `scripts/dev` run, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="cachesvc-dev-"))
    yield home
    shutil.rmtree(home, ignore_errors=True)

