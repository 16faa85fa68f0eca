"""Plain helpers of the test suite (no fixtures: those are in ``conftest.py``, built on these).

| part | what |
| --- | --- |
| stacks and logins | ``throwaway_stack``, ``connect``, ``acting_as``, ``insert_entry`` |
| tokens and HTTP | ``token_maker``, ``as_user``, ``as_service``, ``service_headers``, ``http_client`` |
| services | ``LiveService`` (``cachesvc serve`` in a subprocess), ``running_service`` |
| waiting | ``wait_until``: the one polling loop, with its timeout and its failure message |
| metrics | ``metric``, ``metric_samples``, ``metric_sum``, ``metrics_text`` |
| helper threads | ``CheckedThread``, ``join_all``, ``raise_failures`` |
| feature tables | ``maintainer``, ``create_table``, ``drop_tables``, ``feature_tables`` |
| maintenance | ``maintenance_env``, ``cli``, ``report``, audit months, ``free_month`` |
| scripts/dev | ``dev_env``, ``start_dev`` |

Nothing is mocked: every helper talks to the real servers ``cachesvc.localstack`` starts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import httpx2
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from cachesvc.localstack import SUPERUSER, LocalStack, ServiceProcess, StackError
from cachesvc.maintenance.partitions import month_start
from cachesvc.migrations import PROJECT_ROOT

T = TypeVar("T")

# -- stacks and logins ------------------------------------------------------------------------


@contextlib.contextmanager
def throwaway_stack(prefix: str = "cachesvc-test-", *, bindir: Path | None = None, **pg_conf: str) -> Iterator[LocalStack]:
    """A started stack in a fresh directory (``bindir``: a server other than the default;
    ``pg_conf``: PostgreSQL settings over the throwaway defaults), stopped and removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix=prefix))
    s = LocalStack.throwaway(home, bindir=bindir, **pg_conf)
    try:
        s.start()
        yield s
    finally:
        s.stop()
        shutil.rmtree(home, ignore_errors=True)


def connect(stack: LocalStack, user: str, *, direct: bool = False, **kw) -> psycopg.Connection:
    """A login through PgBouncer (transaction mode: prepared statements off), or direct."""
    if not direct:
        kw.setdefault("prepare_threshold", None)
    return psycopg.connect(stack.url(user, direct=direct), **kw)


@contextlib.contextmanager
def scratch_database(stack: LocalStack, name: str) -> Iterator[str]:
    """An empty database ``name`` on the stack's server (dropped first if a run left one), its
    superuser URL, and dropped again afterwards: for migration tests that start from nothing."""
    def drop_and(create: bool) -> None:
        with psycopg.connect(stack.url(SUPERUSER, dbname="postgres"), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            if create:
                conn.execute(f"CREATE DATABASE {name}")

    drop_and(create=True)
    try:
        yield stack.url(SUPERUSER, dbname=name)
    finally:
        drop_and(create=False)


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


@contextlib.contextmanager
def prewarm_stack(prefix: str) -> Iterator[LocalStack]:
    """A stack on the OS package's PostgreSQL, which has pg_prewarm (the bundled PostgreSQL 16,
    the default for its pgvector, does not): for the tests of warm-up's pg_prewarm path."""
    from cachesvc.localstack.postgres import system_pg_bindirs

    bindirs = system_pg_bindirs()
    assert bindirs, "no OS PostgreSQL package: scripts/bootstrap installs one"
    with throwaway_stack(prefix, bindir=bindirs[0]) as s:
        yield s


# -- tokens and HTTP --------------------------------------------------------------------------


def token_maker(stack: LocalStack):
    """tokens(user) / tokens(service=True), signed with ``stack``'s own secret (each stack has one)."""
    from cachesvc import auth

    secret = stack.settings().jwt_secret

    def make(user: uuid.UUID | str | None = None, *, service: bool = False, **kw) -> str:
        if service:
            return auth.mint(secret, sub="test-service", role=auth.SERVICE_ROLE, **kw)
        return auth.mint(secret, sub=str(user), **kw)

    return make


def as_user(tokens, user) -> dict[str, str]:
    """Headers of a request made by ``user`` with its own token."""
    return {"Authorization": f"Bearer {tokens(user)}"}


def as_service(tokens, user=None) -> dict[str, str]:
    """Headers of a request made with a service token, acting for ``user`` when given."""
    headers = {"Authorization": f"Bearer {tokens(service=True)}"}
    if user is not None:
        headers["X-Cache-User"] = str(user)
    return headers


def service_headers(tokens) -> dict[str, str]:
    """Headers of a request made with a service token (feature reads)."""
    return as_service(tokens)


def http_client(target: ServiceProcess | str, *, timeout: float = 30, **kw) -> httpx2.Client:
    """An HTTP client bound to a service (or a base URL); use it as a context manager."""
    base_url = target if isinstance(target, str) else target.url
    return httpx2.Client(base_url=base_url, timeout=timeout, **kw)


# -- waiting ----------------------------------------------------------------------------------


def wait_until(
    probe: Callable[[], T],
    timeout: float = 15,
    what: str = "the condition",
    *,
    until: Callable[[T], object] | None = None,
    error: str | Callable[[T], object] | None = None,
    interval: float = 0.05,
) -> T:
    """Call ``probe`` until its value is truthy (or ``until(value)`` is), and return that value.

    After ``timeout`` s it fails with ``error`` (a message, or a function of the last value that
    makes one), else with "timed out after {timeout}s waiting for {what}". What ``probe`` or
    ``until`` raise (an assertion on the way, a process that exited) fails at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if until(value) if until is not None else value:
            return value
        if time.monotonic() > deadline:
            if error is None:
                message = f"timed out after {timeout}s waiting for {what}"
            else:
                message = error(value) if callable(error) else error
            raise AssertionError(message)
        time.sleep(interval)


# -- services ---------------------------------------------------------------------------------

Wait = Literal["ready", "alive", "none"]


class LiveService(ServiceProcess):
    """`cachesvc serve` in a subprocess, on a free port, against the stack.

    When returned it answers ``/readyz`` with 200 (``wait="ready"``), or only ``/healthz``
    (``wait="alive"``: warm-up may still be running), or nothing is waited for (``"none"``).
    A service that fails to get there is killed, and the error carries its log.
    """

    def __init__(self, stack: LocalStack, log_path: Path, *, wait: Wait = "ready", timeout: float = 30,
                 **settings) -> None:
        super().__init__(stack, log_path, **settings)
        self.log_path = log_path
        try:
            if wait == "ready":
                self.wait_ready(timeout)
            elif wait == "alive":
                self.wait_alive(timeout)
        except BaseException:
            self.kill()
            raise

    def wait_alive(self, timeout: float = 30) -> None:
        """Until ``/healthz`` answers 200 (the process is up; it need not be ready)."""
        def alive() -> bool:
            if self.proc.poll() is not None:
                raise StackError(f"service exited {self.proc.returncode}:\n{self.log_path.read_text()}")
            try:
                return httpx2.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx2.TransportError:
                return False

        try:
            wait_until(alive, timeout)
        except AssertionError:
            raise StackError(f"service not alive:\n{self.log_path.read_text()}") from None

    def readyz(self) -> httpx2.Response:
        return httpx2.get(self.url + "/readyz", timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


@contextlib.contextmanager
def running_service(stack: LocalStack, log_path: Path, **options) -> Iterator[LiveService]:
    """A ``LiveService`` (same arguments) that is always stopped on leaving; a service that does
    not stop within its grace is killed, and the error carries its log's tail."""
    service = LiveService(stack, log_path, **options)
    try:
        yield service
    finally:
        service.stop()


# -- metrics ----------------------------------------------------------------------------------


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


# -- helper threads ---------------------------------------------------------------------------


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


# -- feature tables ---------------------------------------------------------------------------


@contextlib.contextmanager
def maintainer(stack: LocalStack) -> Iterator[psycopg.Connection]:
    """A direct connection acting as cache_maintainer, as `features load` and `demo` do."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        conn.execute("SET ROLE cache_maintainer")
        yield conn


def create_table(conn: psycopg.Connection, name: str, columns: str, rows: Iterable[Sequence] = ()) -> None:
    """(Re)create ``features.<name>`` with ``columns`` (DDL), fill it by COPY, analyze it."""
    ident = sql.Identifier("features", name)
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(ident))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(ident, sql.SQL(columns)))
    with conn.cursor().copy(sql.SQL("COPY {} FROM STDIN").format(ident)) as copy:
        for row in rows:
            copy.write_row(row)
    conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(ident))


def drop_tables(conn: psycopg.Connection, *names: str) -> None:
    for name in names:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier("features", name)))


def feature_tables(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'features'")]


# -- maintenance ------------------------------------------------------------------------------


def maintenance_env(stack: LocalStack) -> dict[str, str]:
    """The environment of a maintenance command run by cron: the stack, as cache_maintainer, direct."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHESVC_", "PG"))}
    return env | stack.env() | {"CACHESVC_ADMIN_DATABASE_URL": stack.url("cachesvc_maintainer", direct=True)}


def cli(env: dict, *args: str, fault: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``cachesvc <args>`` in ``env``; ``fault`` names the point where it kills itself."""
    if fault:
        env = env | {"CACHESVC_FAULT_KILL_AT": fault}
    return subprocess.run([sys.executable, "-m", "cachesvc", *args], env=env, capture_output=True, text=True, timeout=timeout)


def report(result: subprocess.CompletedProcess) -> dict:
    """A command's JSON summary (stdout)."""
    assert result.stdout, result.stderr
    return json.loads(result.stdout)


def this_month(admin) -> dt.date:
    return month_start(admin.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0])


def utc(month: dt.date) -> dt.datetime:
    return dt.datetime(month.year, month.month, 1, tzinfo=dt.UTC)


def seed_audit_month(admin, month: dt.date, rows: int) -> None:
    admin.execute("SELECT create_monthly_audit_partition(%s)", (month,))
    admin.execute(
        """
        INSERT INTO cache_audit_log (occurred_at, user_id, actor, action, content_type, cache_key, details)
        SELECT %s::timestamptz + g * interval '37 seconds', gen_random_uuid(), 'user',
               (ARRAY['put', 'delete', 'erase'])[1 + g %% 3], 'chapter', 'key/' || g || E'\\t"quoted"',
               jsonb_build_object('n', g, 'text', E'line\\nbreak \\\\ back', 'nested', jsonb_build_object('x', g * 1.5))
          FROM generate_series(1, %s) AS g
        """,
        (utc(month), rows),
    )


def past_audit_rows(admin, before: dt.date) -> list[dict]:
    return [
        json.loads(r[0])
        for r in admin.execute(
            "SELECT row_to_json(t)::text FROM cache_audit_log t WHERE occurred_at < %s ORDER BY id", (utc(before),)
        )
    ]


def archived_rows(dest: Path) -> list[dict]:
    rows = []
    for file in sorted(dest.glob("*.jsonl.gz")):
        with gzip.open(file, "rt") as fh:
            rows += [json.loads(line) for line in fh]
    return sorted(rows, key=lambda r: r["id"])


def free_month(admin) -> dt.datetime:
    """A month in the window ensure_monthly_partitions accepts that has no partition yet."""
    today = dt.datetime.now(dt.UTC).replace(day=15, hour=12, minute=0, second=0, microsecond=0)
    for ahead in range(5, 13):
        year, month = divmod(today.month - 1 + ahead, 12)
        at = today.replace(year=today.year + year, month=month + 1)
        suffix = at.strftime("_y%Ym%m")
        if admin.execute("SELECT to_regclass(%s) IS NULL AND to_regclass(%s) IS NULL",
                         (f"infinite_pages_cache{suffix}", f"cache_audit_log{suffix}")).fetchone()[0]:
            return at
    pytest.fail("no month without partitions in the window")


# -- scripts/dev ------------------------------------------------------------------------------

DEV = PROJECT_ROOT / "scripts" / "dev"


def dev_env(home: Path) -> dict[str, str]:
    """The environment of a `scripts/dev` run in ``home``, on free ports."""
    from cachesvc.localstack import free_port

    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    return env | {
        "CACHESVC_HOME": str(home),
        "CACHESVC_PORT": str(free_port()),
        "CACHESVC_DEV_PG_PORT": str(free_port()),
        "CACHESVC_DEV_PGBOUNCER_PORT": str(free_port()),
    }


def start_dev(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen:
    """`scripts/dev [args]` started, once its service answers /healthz (killed if it never does)."""
    with open(log, "wb") as stderr:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(DEV), *args], env=env, stdout=subprocess.DEVNULL, stderr=stderr, cwd=PROJECT_ROOT)
    healthz = f"http://127.0.0.1:{env['CACHESVC_PORT']}/healthz"

    def alive() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"scripts/dev exited with {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(healthz, timeout=5) as resp:
                return resp.status == 200
        except urllib.error.HTTPError:
            return False
        except (urllib.error.URLError, ConnectionError):
            return False

    try:
        wait_until(alive, 120, interval=0.2)
    except AssertionError:
        proc.kill()
        pytest.fail(f"scripts/dev did not answer /healthz in time:\n{log.read_text()}")
    return proc
