"""The test harness: one real PostgreSQL + PgBouncer per test session, on free ports.

Nothing is mocked. The servers are started by ``cachesvc.localstack`` (the same code that
``scripts/dev`` and the benchmarks use), migrated to head, with one login per group role.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TypeVar
from pathlib import Path

import httpx2
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

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


# -- metrics ---------------------------------------------------------------------------------


def metrics_text(source: str | ServiceProcess) -> str:
    """The Prometheus text of a service's /metrics (or ``source`` itself when it is that text)."""
    if isinstance(source, str):
        return source
    res = httpx2.get(source.url + "/metrics", timeout=5)
    assert res.status_code == 200, res.text
    return res.text


def metric_samples(source: str | ServiceProcess, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """Every sample named ``name``, by label set. Fails when no metric family declares ``name``
    (a typo, or a metric that was removed), so that an empty result means "no sample yet"."""
    declared, samples = False, {}
    for family in text_string_to_metric_families(metrics_text(source)):
        if name in (family.name, *(family.name + s for s in ("_total", "_count", "_sum", "_bucket"))):
            declared = True
        for sample in family.samples:
            if sample.name == name:
                samples[frozenset(sample.labels.items())] = sample.value
    assert declared, f"no metric family declares {name}"
    return samples


def metric(source: str | ServiceProcess, name: str, labels: dict[str, str] | None = None, *,
           missing_ok: bool = False) -> float:
    """The value of the one sample ``name{labels}``, with exactly that label set (none: ``{}``).

    Fails when no sample has exactly these labels, listing those it has. ``missing_ok`` reads
    0 instead, for a reading taken *before* the action under test (a labelled counter has no
    sample until first counted); read the *after* value strictly, so that a wrong name or label
    set still fails the test.
    """
    samples = metric_samples(source, name)
    key = frozenset((labels or {}).items())
    if key in samples:
        return samples[key]
    if missing_ok:
        return 0.0
    raise AssertionError(f"no sample {name}{dict(key)}; samples: {[dict(k) for k in samples] or 'none'}")


def metric_sum(source: str | ServiceProcess, name: str) -> float:
    """The sum of every sample of ``name`` whatever its labels (0 when none), the name checked."""
    return sum(metric_samples(source, name).values())


T = TypeVar("T")


def wait_until(check: Callable[[], T], timeout: float = 15, what: str = "the condition") -> T:
    """Poll ``check`` until it returns something truthy (returned); fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return value


# -- helper threads -------------------------------------------------------------------------


class CheckedThread(threading.Thread):
    """A helper thread whose exception is kept for the test to re-raise (``join_all``).

    Left alone, an assertion failing in a thread reaches pytest only as a warning about an
    unhandled thread exception, and the test itself passes.
    """

    def __init__(self, target: Callable[..., object], *args: object, name: str | None = None) -> None:
        super().__init__(target=target, args=args, name=name, daemon=True)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            super().run()
        except BaseException as exc:  # re-raised in the test by join_all
            self.error = exc


def join_all(threads: Iterable[CheckedThread], timeout: float = 60) -> None:
    """Join every thread, then re-raise in the test what they raised (several: as a group).

    A thread still running after ``timeout`` fails the test too.
    """
    threads = list(threads)
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0))
    _reraise([t.error for t in threads if t.error is not None]
             + [AssertionError(f"thread {t.name} still running after {timeout}s") for t in threads if t.is_alive()])


def raise_failures(threads: Iterable[CheckedThread]) -> None:
    """Re-raise at once what any of ``threads`` has raised so far: for polling loops, so that
    a failed thread fails the test now rather than as a timeout of the wait."""
    _reraise([t.error for t in threads if t.error is not None])


def _reraise(errors: list[BaseException]) -> None:
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise BaseExceptionGroup(f"{len(errors)} helper threads failed", errors)
