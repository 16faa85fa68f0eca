"""The read replica's health: is it a standby of our primary, and how far behind is it?

Every ``replica_check_interval_s`` the monitor reads the primary's WAL write position
(``pg_current_wal_lsn()``), noting the time on the service's own monotonic clock just before,
and then the standby's replay position (``pg_last_wal_replay_lsn()``). It keeps the primary's
positions of the last minute. Once the standby has replayed up to the position the primary
had at time *t*, it holds everything committed before *t*; the latest such *t* is
``covered_at``, and the replica's staleness at any later moment is at most ``now -
covered_at``. That bound ages by itself: a replica that stops replaying, or a monitor that
stops getting answers, is skipped once it exceeds ``replica_max_lag_s``, without another check.

Comparing WAL positions needs no clock of either server, and an idle primary writes no WAL,
so an idle pair shows no lag (``now() - pg_last_xact_replay_timestamp()`` grows without bound
when nothing is written). Both positions are read as the service's login, through PgBouncer,
on one connection to each server kept for the checks alone (``pools.create_check_pools``): a
check never waits behind requests. Every function used is executable by PUBLIC.

A restart of the standby can take it back in time: after a crash it reopens at its last
restart point and replays forward from there, and behind PgBouncer the service may not even
see a connection drop. So a replay position lower than one seen before, or a new postmaster
start time, is a restart: the position seen before stays the replica's ``high_water``, and
the replica is unusable until it has replayed that far again (and is within the lag bound).
The checks alone cannot catch a restart that falls between two of them, so every read on the
replica proves its own freshness (``proves``, called by cachesvc.db.routing): its transaction
reads the standby's replay position before its data, and the read counts only if that
position is at least ``high_water`` (every consistency token the router let through is at or
below it) and within the lag bound now; otherwise it is run again on the primary.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from psycopg_pool import AsyncConnectionPool

from cachesvc.db.bounded import Bounded
from cachesvc.db.lsn import format_lsn
from cachesvc.settings import ReplicaSettings

log = logging.getLogger("cachesvc.replica")

HISTORY_S = 60.0  # how far back the primary's positions are kept (lag beyond it is "at least")
MAX_BACKOFF_S = 30.0

PRIMARY_POSITION = """
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn, (SELECT system_identifier FROM pg_control_system())
"""
REPLICA_POSITION = """
SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn() - '0/0'::pg_lsn,
       (SELECT system_identifier FROM pg_control_system()), pg_postmaster_start_time()
"""
# The first statement of every read on the replica: where the standby is as the read runs.
# (NULL on a server that is not in recovery: such a read proves nothing.)
READ_POSITION = "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, pg_postmaster_start_time()"


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # monotonic time just before the primary was asked
    position: int  # the primary's WAL write position then


def covered_since(samples: deque[Sample], replayed: int) -> float | None:
    """Time of the latest sample the replica has replayed up to (None: none of them)."""
    for sample in reversed(samples):
        if sample.position <= replayed:
            return sample.at
    return None


class ReplicaMonitor:
    """Checks the replica in the background; the router asks ``usable()`` on every read."""

    def __init__(
        self, primary: AsyncConnectionPool, replica: AsyncConnectionPool, read_pool: AsyncConnectionPool, settings: ReplicaSettings
    ) -> None:
        """``primary`` and ``replica``: the check pools (one connection each); ``read_pool``: the
        replica's request pool, whose connections are checked when the replica comes back."""
        self.primary = primary
        self.replica = replica
        self.read_pool = read_pool
        self.max_lag_s = settings.max_lag_s
        self.interval_s = settings.check_interval_s
        self.timeout_s = settings.timeout_s
        self.samples: deque[Sample] = deque()
        self.primary_id: int | None = None
        self.covered_at: float | None = None
        self.replay_position = 0
        self.high_water = 0  # the furthest replay position seen: a restart must replay past it again
        self.position_taken_at = 0.0  # when the check or read that reported replay_position began
        self.restarts = 0
        self.server_started_at: dt.datetime | None = None  # the replica's postmaster start
        self.problem: str | None = None  # "down", "not_a_standby": skipped whatever its lag
        self.error: str | None = None
        self.primary_error: str | None = None
        self.failures = 0
        self.retry_at = 0.0
        self.checks = 0
        self.on_unusable: list[Callable[[], None]] = []  # called when the replica fails or restarts
        self._bounded = Bounded()

    # -- what the router asks ------------------------------------------------------------

    def staleness(self, now: float | None = None) -> float | None:
        """At most how many seconds the replica is behind the primary now (None: unknown)."""
        if self.covered_at is None:
            return None
        return (time.monotonic() if now is None else now) - self.covered_at

    def usable(self, now: float | None = None) -> bool:
        stale = self.staleness(now)
        return (self.problem is None and stale is not None and stale <= self.max_lag_s
                and self.replay_position >= self.high_water)

    def proves(self, position: int | None, started: dt.datetime | None, taken_at: float, floor: int) -> bool:
        """Whether a read begun at ``taken_at``, when ``high_water`` was ``floor``, that found
        the standby at ``position`` (its postmaster started at ``started``) is fresh enough: at
        or past ``floor`` (so past every token let through before it began), and within the lag
        bound now. A position that shows a restart is taken in (the replica turns unusable
        until it has caught up)."""
        if position is None:
            return False
        self._observe(int(position), started, taken_at)
        if position < floor:
            return False
        covered = covered_since(self.samples, position)
        return covered is not None and time.monotonic() - covered <= self.max_lag_s

    def state(self, now: float | None = None) -> str:
        if self.problem is not None:
            return self.problem
        if self.covered_at is None:
            return "unchecked"
        if self.replay_position < self.high_water:
            return "restarted"
        return "ok" if self.usable(now) else "lagging"

    def lag(self) -> tuple[float | None, int | None]:
        """(seconds, bytes) the replica was behind at the last check."""
        if not self.samples or self.covered_at is None:
            return None, None
        latest = self.samples[-1]
        return max(latest.at - self.covered_at, 0.0), max(latest.position - self.replay_position, 0)

    def status(self) -> dict:
        seconds, behind = self.lag()
        stale = self.staleness()
        body = {
            "configured": True,
            "state": self.state(),
            "usable": self.usable(),
            "stalenessSeconds": None if stale is None else round(stale, 3),
            "lagSeconds": None if seconds is None else round(seconds, 3),
            "lagBytes": behind,
            "maxLagSeconds": self.max_lag_s,
            "replayLsn": format_lsn(self.replay_position) if self.replay_position else None,
            "restarts": self.restarts,
        }
        if self.error:
            body["error"] = self.error
        if self.primary_error:
            body["primaryError"] = self.primary_error
        return body

    def mark_failed(self, exc: BaseException) -> None:
        """The replica failed a read or a check: skip it, and check again after a backoff
        that doubles with each failed check (reads failing meanwhile do not extend it)."""
        now = time.monotonic()
        if self.problem == "down" and now < self.retry_at:
            return
        was_down = self.problem == "down"
        if not was_down:
            log.warning("read replica unavailable, reading from the primary: %s: %s", type(exc).__name__, exc)
        self.problem = "down"
        self.error = f"{type(exc).__name__}: {exc}".strip()
        self.covered_at = None  # whatever comes back is measured afresh
        self.failures += 1
        self.retry_at = now + min(self.interval_s * 2 ** (self.failures - 1), MAX_BACKOFF_S)
        if not was_down:
            self._unusable()

    def _unusable(self) -> None:
        for callback in self.on_unusable:
            callback()

    # -- checking --------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not stop the checks
                log.exception("replica check failed: %s", exc)
            await asyncio.sleep(max(self.interval_s - (time.monotonic() - started), 0.01))

    async def check(self) -> None:
        self.checks += 1
        await self._sample_primary()
        if time.monotonic() < self.retry_at:
            return
        taken_at = time.monotonic()
        try:
            in_recovery, replayed, system_id, started = await self._bounded(
                _one_row(self.replica, REPLICA_POSITION, self.timeout_s), self.timeout_s
            )
        except Exception as exc:
            self.mark_failed(exc)
            return
        if not in_recovery or self.primary_id is None or system_id != self.primary_id:
            self._not_a_standby(in_recovery, system_id)
            return
        if self.problem == "down":
            await self._renew_read_connections()
        self._replayed(int(replayed), started, taken_at)

    async def _renew_read_connections(self) -> None:
        """Back from down: connections the request pool holds to a restarted replica or
        PgBouncer are dead; replace them before reads return (an idle connection is otherwise
        only checked after a few seconds)."""
        try:
            await self._bounded(self.read_pool.check(), self.timeout_s)
        except Exception as exc:  # what is left broken is replaced when a read meets it
            log.info("checking the replica's pooled connections: %s", exc)

    async def _sample_primary(self) -> None:
        at = time.monotonic()
        try:
            position, system_id = await self._bounded(_one_row(self.primary, PRIMARY_POSITION, self.timeout_s), self.timeout_s)
        except Exception as exc:  # the replica's coverage ages until the primary answers again
            self.primary_error = f"{type(exc).__name__}: {exc}".strip()
            return
        self.primary_error = None
        self.primary_id = system_id
        self.samples.append(Sample(at, int(position)))
        horizon = at - max(HISTORY_S, 2 * self.max_lag_s)
        while self.samples and self.samples[0].at < horizon:
            self.samples.popleft()

    def _replayed(self, position: int, started: dt.datetime, taken_at: float) -> None:
        if self.problem is not None:
            log.info("read replica available again", extra={"fields": {"was": self.problem}})
        self.problem, self.error, self.failures = None, None, 0
        self._observe(position, started, taken_at)

    def _observe(self, position: int, started: dt.datetime | None, taken_at: float) -> None:
        """Take in a replay position the standby reported (by a check or by a read), asked for
        at ``taken_at``. Reports of concurrent checks and reads may arrive out of order: a lower
        position is a restart only when it was asked for after the one it is lower than."""
        if position < self.replay_position and taken_at < self.position_taken_at:
            return  # an older report overtaken by a newer one
        restarted = position < self.replay_position or (
            started is not None and self.server_started_at is not None and started != self.server_started_at
        )
        if restarted:
            self.restarts += 1
            log.warning(
                "read replica restarted; unusable until it has replayed past %s again", format_lsn(self.high_water),
                extra={"fields": {"replayLsn": format_lsn(position), "highWater": format_lsn(self.high_water)}},
            )
            self.covered_at = None  # measured afresh from this position
            self._unusable()
        self.replay_position, self.position_taken_at = position, taken_at
        self.high_water = max(self.high_water, position)
        if started is not None:
            self.server_started_at = started
        covered = covered_since(self.samples, position)
        if covered is not None and (self.covered_at is None or covered > self.covered_at):
            self.covered_at = covered

    def _not_a_standby(self, in_recovery: bool, system_id: int) -> None:
        if self.primary_id is None:  # cannot tell yet: the primary did not answer
            self.error = "the primary's system identifier is not known yet"
            return
        if self.problem != "not_a_standby":
            log.error(
                "CACHESVC_READ_DATABASE_URL is not a hot standby of the primary; reading from the primary",
                extra={"fields": {"inRecovery": in_recovery, "sameSystem": system_id == self.primary_id}},
            )
        self.problem = "not_a_standby"
        self.error = "not in recovery" if not in_recovery else "a standby of another cluster"
        self.covered_at = None


async def _one_row(pool: AsyncConnectionPool, query: str, timeout: float) -> tuple:
    async with pool.connection(timeout=timeout) as conn:
        cur = await conn.execute(query)
        return await cur.fetchone()
