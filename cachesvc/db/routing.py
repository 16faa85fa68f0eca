"""Read routing: which database server answers a read, and the fallback when it cannot.

Without ``CACHESVC_READ_DATABASE_URL`` every read goes to the primary. With it, a read goes
to the replica unless one of these sends it to the primary:

1. the replica is not usable (replica.py): down, not a standby of our primary, not
   checked yet, or possibly more than ``replica_max_lag_s`` behind;
2. read-your-writes: a user of the read wrote (PUT, DELETE, erase) through this process in
   the last ``read_your_writes_s`` seconds. The window is at least the lag bound, so once it
   has passed a usable replica holds the write;
3. a consistency token: the read carries the WAL position a write returned (from any service
   process) and the replica has not replayed that far yet.

A read routed to the replica that fails there (connection refused or lost, no pooled
connection or no answer within ``replica_timeout_s``, a query cancelled by a replay conflict,
any database error) is run again on the primary, without an error for the client. A lost or
refused connection also marks the replica down at once, until a later check finds it well; a
slow or busy replica is left to the monitor's checks, which have connections of their own.

The choice is made once per read, by ``ReadRouter.choose``, and travels with it (a coalesced
read joins the batch of its server); ``Reads.run`` then runs the read there through the one
transaction runner, and goes to the primary when the replica has turned unusable meanwhile,
fails the read, or cannot prove it fresh: every read on the replica reads the standby's replay
position first, in the same round trip, and counts only if that position is past every
consistency token let through and within the lag bound (replica.py), so that a standby that
restarted behind PgBouncer, back in time, is never read as if it were current.

Writes, erase, statistics and the counter flushes never come here: they use the primary's pool.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import psycopg
import psycopg_pool
from psycopg_pool import AsyncConnectionPool

from cachesvc.db.bounded import Bounded
from cachesvc.db.errors import connection_lost
from cachesvc.db.replica import READ_POSITION, ReplicaMonitor
from cachesvc.db.transaction import Budget, Statement, Transactions
from cachesvc.settings import ReplicaSettings

T = TypeVar("T")


class Target(enum.Enum):
    PRIMARY = "primary"
    REPLICA = "replica"


class RecentWriters:
    """Users who wrote through this process within the last ``window_s`` seconds.

    Kept in order of their last write, so expired users are dropped from the front: memory is
    bounded by the users writing within one window.
    """

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.clock = clock
        self._last: dict[uuid.UUID, float] = {}

    def add(self, user_id: uuid.UUID) -> None:
        now = self.clock()
        self._last.pop(user_id, None)
        self._last[user_id] = now
        self._expire(now)

    def __contains__(self, user_id: uuid.UUID) -> bool:
        at = self._last.get(user_id)
        return at is not None and self.clock() - at < self.window_s

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._last)

    def _expire(self, now: float) -> None:
        while self._last:
            first = next(iter(self._last))
            if now - self._last[first] < self.window_s:
                return
            del self._last[first]


class ReadRouter:
    """Chooses the server of each read, once; runs an attempt there, falling back to the primary."""

    def __init__(
        self, monitor: ReplicaMonitor | None, settings: ReplicaSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.monitor = monitor
        self.clock = clock  # the write window's and the lag bound's (the monitor samples on time.monotonic)
        self.recent = RecentWriters(settings.read_your_writes_s, clock)
        self.timeout_s = settings.timeout_s
        self.routes: Counter[tuple[str, str]] = Counter()  # (target, reason) -> reads
        self.fallbacks: Counter[str] = Counter()  # failure kind -> replica attempts redone on the primary
        self._bounded = Bounded()

    def wrote(self, user_id: uuid.UUID) -> None:
        if self.monitor is not None:
            self.recent.add(user_id)

    def choose(self, users: Iterable[uuid.UUID] = (), after_lsn: int | None = None, *, warm: bool = True) -> Target:
        """Where a read of ``users`` goes (``warm``: the caller's data is warm on the replica)."""
        if self.monitor is None:
            return Target.PRIMARY
        reason = self._keep_on_primary(users, after_lsn, warm)
        target = Target.PRIMARY if reason else Target.REPLICA
        self.routes[(target.value, reason or "replica_ok")] += 1
        return target

    def _keep_on_primary(self, users: Iterable[uuid.UUID], after_lsn: int | None, warm: bool) -> str | None:
        monitor, now = self.monitor, self.clock()
        if not monitor.usable(now):
            return f"replica_{monitor.state(now)}"
        if not warm:
            return "replica_warming"
        if any(user in self.recent for user in users):
            return "recent_write"
        if after_lsn is not None and monitor.replay_position < after_lsn:
            return "consistency_token"
        return None

    async def run(self, target: Target, attempt: Callable[[Target], Awaitable[T]]) -> T:
        """``attempt(target)``, as chosen; on the replica bounded by ``replica_timeout_s``, and
        run again on the primary if the replica fails or cannot prove the read fresh. A read
        chosen for the replica that starts (a coalesced read waits for a lane) once the replica
        is no longer usable goes to the primary instead."""
        if target is Target.REPLICA and not self.monitor.usable(self.clock()):
            self.routes[(Target.PRIMARY.value, "replica_unusable_at_start")] += 1
            target = Target.PRIMARY
        if target is Target.PRIMARY:
            return await attempt(Target.PRIMARY)
        try:
            return await self._bounded(attempt(Target.REPLICA), self.timeout_s)
        except StaleRead:
            self.fallbacks["StaleRead"] += 1
        except psycopg.Error as exc:  # PoolTimeout and DatabaseTimeout are OperationalErrors too
            if _replica_gone(exc):
                self.monitor.mark_failed(exc)
            self.fallbacks[type(exc).__name__] += 1
        return await attempt(Target.PRIMARY)


class Reads:
    """Read-only transactions through the one runner, each on the server chosen for it."""

    def __init__(
        self, transactions: Transactions, router: ReadRouter, primary: AsyncConnectionPool,
        replica: AsyncConnectionPool | None = None,
    ) -> None:
        self.transactions = transactions
        self.router = router
        self.pools = {Target.PRIMARY: primary, Target.REPLICA: replica}

    async def run(
        self, target: Target, statements: Sequence[Statement], *,
        context: Sequence[tuple[str, str]] = (), budget: Budget | None = None,
    ) -> list[list[tuple]]:
        """``statements`` in one read-only transaction on ``target`` (``Transactions.run``).

        Retried once on the primary after a lost connection; never on the replica, whose
        failure is run again on the primary instead."""

        def attempt(on: Target) -> Awaitable[list[list[tuple]]]:
            if on is Target.REPLICA:
                return self._on_replica(statements, context, budget)
            return self.transactions.run(
                self.pools[on], statements, context=context, read_only=True, retry=True, budget=budget
            )

        return await self.router.run(target, attempt)

    async def _on_replica(
        self, statements: Sequence[Statement], context: Sequence[tuple[str, str]], budget: Budget | None,
    ) -> list[list[tuple]]:
        """The read on the replica, proving its freshness (replica.py): the standby's replay
        position is read first, in the same transaction and round trip; a read it does not
        prove fresh raises StaleRead (and is run again on the primary)."""
        monitor = self.router.monitor
        taken_at, floor = time.monotonic(), monitor.high_water
        position, *results = await self.transactions.run(
            self.pools[Target.REPLICA], [(READ_POSITION, None), *statements], context=context, read_only=True,
            retry=False, budget=budget,
        )
        (replayed, started), = position
        if not monitor.proves(replayed, started, taken_at, floor):
            raise StaleRead(f"the replica answered at {replayed}, short of {floor} or beyond the lag bound")
        return results


class StaleRead(Exception):
    """A read on the replica that its replay position does not prove fresh enough."""


def _replica_gone(exc: psycopg.Error) -> bool:
    """The replica's connection was refused or lost (not a timeout, a busy pool or a conflict)."""
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return False
    return isinstance(exc, psycopg.OperationalError) and connection_lost(exc)
