"""The one transaction runner: every request's database work goes through ``Transactions.run``.

A transaction is sent as one simple-protocol query string, bound client-side::

    BEGIN [READ ONLY]; SELECT set_config(…, true), …[, cachesvc_before_deadline(…)]; <statements>; COMMIT [; <then>]

One network round trip, and with PgBouncer in transaction mode every setting (the user, the
timeouts) lives and dies with the transaction. The settings' statement also reads the server's
start time (``server_started_at``), so that a restart is seen by the first transaction after it. Measured here: half the client CPU of the same
statements sent as an extended-protocol pipeline (90 vs 185 us for four statements).

Time: a request has one ``Budget`` (``CACHESVC_REQUEST_TIMEOUT_S``), set when it arrives and
carried in a context variable. Waiting for a pooled connection, every attempt and the retry
all come out of it; past it the caller gets ``DatabaseTimeout`` at once while the attempt is
cancelled in the background. The server is told too: ``statement_timeout`` is never more
than what is left of the budget.

Late writes: a transaction that is not read-only checks, first thing on the server, that its
request has not given up yet (``cachesvc_before_deadline``, by wall clock). A write held in a
frozen PgBouncer or server past the budget then commits nothing when it is finally read,
instead of applying a write whose client was answered 503, maybe over a newer one.

Retry: with ``retry``, an attempt that lost its connection (server restarted, backend
terminated, PgBouncer restarted) is made once more, if the budget has time left. Only reads
and idempotent writes ask for it: a DELETE whose COMMIT was lost would answer 404 for work
that was done.

PgBouncer turned away: an attempt that PgBouncer refused before sending it on (no server
connection and a failed login since, as after the server restarts; cachesvc.db.errors) did
nothing, so any transaction is sent again, after pauses that start at ``REFUSED_PAUSE_S`` and
double, for at most ``REFUSED_WAIT_S`` and within the budget. Right after a restart the first
requests then wait for PgBouncer's next login instead of failing; while the server is really
down, a request is answered 503 after ``REFUSED_WAIT_S``, having reconnected to PgBouncer
(which closes a client it turns away) six times, not once every pause of a fixed short period.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime as dt
import time
import weakref
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import AsyncClientCursor, sql
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from cachesvc.db.bounded import Bounded
from cachesvc.settings import DatabaseSettings
from cachesvc.db.errors import DatabaseTimeout, bouncer_refused, connection_lost

T = TypeVar("T")

Statement = tuple[str | sql.Composable, Any]  # SQL and its parameters (None: sent verbatim)

# sql/functions/cachesvc_before_deadline.v1.sql: raises query_canceled past the deadline. A
# write evaluates it with the transaction's settings, in their SELECT.
BEFORE_DEADLINE = "cachesvc_before_deadline(%s)"

# How often, and how long, an attempt PgBouncer turned away is sent again (module docstring).
# The wait covers the server_login_retry our PgBouncer configuration sets (0.25 s, cachesvc.pgbouncer)
# and a login; a PgBouncer configured elsewhere should keep it well below REFUSED_WAIT_S.
REFUSED_PAUSE_S = 0.02  # then 0.04, 0.08 …
REFUSED_WAIT_S = 1.5


class Budget:
    """The time a request may spend waiting on the database, all attempts included."""

    __slots__ = ("seconds", "deadline")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def expired(self) -> DatabaseTimeout:
        return DatabaseTimeout(f"no answer from the database within the request's {self.seconds}s")


# The start time of the server behind each pool, as the last transaction answered there read
# it (``pg_postmaster_start_time()`` rides in every transaction's settings statement): how the
# service learns that PostgreSQL restarted without asking anything of its own
# (cachesvc.features.readiness.watch_restarts). Asking on a timer would, while the server is
# down, make PgBouncer fail a login, and PgBouncer then turns clients away until its next
# login succeeds, even once the server is back.
_server_started: weakref.WeakKeyDictionary[AsyncConnectionPool, dt.datetime] = weakref.WeakKeyDictionary()


def server_started_at(pool: AsyncConnectionPool) -> dt.datetime | None:
    """When the server behind ``pool`` started, as the last transaction answered there saw it."""
    return _server_started.get(pool)


_budget: contextvars.ContextVar[Budget | None] = contextvars.ContextVar("cachesvc_budget", default=None)


def start_budget(seconds: float) -> Budget:
    """The budget of the request being handled in this context (set once, on arrival)."""
    budget = Budget(seconds)
    _budget.set(budget)
    return budget


def current_budget() -> Budget | None:
    return _budget.get()


class Transactions:
    """Runs transactions on a pool, as a user (or a set of readers), within the budget."""

    def __init__(
        self, request_timeout_s: float = 6.0, statement_timeout_ms: int = 5000, idle_in_transaction_timeout_ms: int = 10000,
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:
        self.request_timeout_s = request_timeout_s
        self.statement_timeout_ms = statement_timeout_ms
        self.idle_timeout = str(idle_in_transaction_timeout_ms)
        self.on_retry = on_retry
        self._bounded = Bounded()

    @classmethod
    def from_settings(cls, settings: DatabaseSettings, on_retry: Callable[[], None] = lambda: None) -> Transactions:
        return cls(
            settings.request_timeout_s, settings.statement_timeout_ms, settings.idle_in_transaction_timeout_ms, on_retry
        )

    async def run(
        self,
        pool: AsyncConnectionPool,
        statements: Sequence[Statement],
        *,
        context: Sequence[tuple[str, str]] = (),
        read_only: bool = False,
        retry: bool = True,
        then: str | None = None,
        budget: Budget | None = None,
    ) -> list[list[tuple]]:
        """Run ``statements`` in one transaction; returns the rows of each (then ``then``'s).

        ``context``: transaction-local settings (``cachesvc.user_id`` …) set after BEGIN.
        ``then``: a statement sent after COMMIT in the same string (a write's WAL position).
        ``budget``: the request's (the context's) unless given; a fresh one outside requests.
        """
        budget = budget or _budget.get() or Budget(self.request_timeout_s)
        attempts = 2 if retry else 1
        attempt, refused_until, pause = 1, None, REFUSED_PAUSE_S
        while True:
            left = budget.remaining()
            if left <= 0:
                raise budget.expired()
            try:
                return await self._bounded(self._once(pool, statements, context, read_only, then, budget), left)
            except DatabaseTimeout:
                raise budget.expired() from None
            except psycopg.OperationalError as exc:
                if bouncer_refused(exc):  # nothing reached the server: any transaction may go again
                    if refused_until is None:  # counted once, however many times it is sent
                        refused_until = time.monotonic() + REFUSED_WAIT_S
                        self.on_retry()
                    if time.monotonic() + pause < min(refused_until, budget.deadline):
                        await asyncio.sleep(pause)
                        pause *= 2
                        continue
                    raise
                if attempt == attempts or not connection_lost(exc) or budget.remaining() <= 0:
                    raise
                attempt += 1
                self.on_retry()

    async def _once(
        self, pool: AsyncConnectionPool, statements: Sequence[Statement], context: Sequence[tuple[str, str]],
        read_only: bool, then: str | None, budget: Budget,
    ) -> list[list[tuple]]:
        wait = max(min(pool.timeout, budget.remaining()), 0.001)  # CACHESVC_POOL_TIMEOUT_S or less
        try:
            async with pool.connection(timeout=wait) as conn:
                return await self._in(pool, conn, statements, context, read_only, then, budget)
        except PoolTimeout:
            if wait < pool.timeout:  # the wait was what was left of the budget: that ran out
                raise budget.expired() from None
            raise

    async def _in(
        self, pool: AsyncConnectionPool, conn: psycopg.AsyncConnection, statements: Sequence[Statement],
        context: Sequence[tuple[str, str]], read_only: bool, then: str | None, budget: Budget,
    ) -> list[list[tuple]]:
        cur = AsyncClientCursor(conn)
        text = self._query(cur, statements, context, read_only, then, budget.remaining())
        try:
            await cur.execute(text)
            results = []
            cur.nextset()  # past BEGIN, to the context (and a write's deadline check)
            _server_started[pool] = (await cur.fetchone())[0]
            for _ in statements:
                cur.nextset()
                results.append(await cur.fetchall())
            if then is not None:
                cur.nextset()  # past COMMIT
                cur.nextset()
                results.append(await cur.fetchall())
        except BaseException:
            if not conn.closed and conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                await conn.rollback()
            raise
        return results

    def _query(
        self, cur: AsyncClientCursor, statements: Sequence[Statement], context: Sequence[tuple[str, str]],
        read_only: bool, then: str | None, left: float,
    ) -> str:
        # The server stops a statement no later than the budget ends (never below 1 ms: 0 is "none").
        statement_timeout = str(max(1, min(self.statement_timeout_ms, int(left * 1000))))
        settings = [*context, ("statement_timeout", statement_timeout), ("idle_in_transaction_session_timeout", self.idle_timeout)]
        set_context = "SELECT pg_postmaster_start_time(), " + ", ".join("set_config(%s, %s, true)" for _ in settings)
        params: list[Any] = [v for pair in settings for v in pair]
        if not read_only:  # a write that reaches the server after its request gave up does nothing
            # In the same statement as the settings: one statement fewer per write (PUT
            # transactions through PgBouncer: 1,168 -> 1,236 tx/s, docs/performance.md). It
            # waits for nothing, so the budget's statement_timeout, which applies from the next
            # statement on, is not needed for it.
            set_context += ", " + BEFORE_DEADLINE
            params.append(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=left))
        parts = ["BEGIN READ ONLY" if read_only else "BEGIN", cur.mogrify(set_context, params)]
        for statement, params in statements:
            if params is None:
                parts.append(statement if isinstance(statement, str) else statement.as_string(cur))
            else:
                parts.append(cur.mogrify(statement, params))
        parts.append("COMMIT")
        if then is not None:
            parts.append(then)
        return ";\n".join(parts)


async def within_budget(awaitable, budget: Budget | None = None):
    """Await ``awaitable`` (e.g. a coalesced read's result) for what is left of the budget."""
    budget = budget or _budget.get()
    if budget is None:
        return await awaitable
    left = budget.remaining()
    if left <= 0:
        raise budget.expired()
    try:
        async with asyncio.timeout(left):  # not wait_for: on 3.11 it can swallow a cancellation
            return await awaitable
    except TimeoutError:
        raise budget.expired() from None
