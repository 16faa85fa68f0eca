"""The pieces of read routing that need no server: WAL positions, the lag bound from samples,
the read-your-writes window and the lag bound's ageing (on a clock the tests move), and the
settings that keep the guarantees consistent."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections import deque

import pytest

from cachesvc.db.batcher import ReadBatcher
from cachesvc.db.lsn import format_lsn, parse_lsn
from cachesvc.db.replica import ReplicaMonitor, Sample, covered_since
from cachesvc.db.routing import ReadRouter, RecentWriters, Target
from cachesvc.settings import Settings, SettingsError


def test_wal_positions_round_trip_as_postgresql_prints_them():
    for text, value in (("0/0", 0), ("0/16B3748", 0x16B3748), ("16/B374D848", (0x16 << 32) | 0xB374D848),
                        ("FFFFFFFF/FFFFFFFF", 2**64 - 1)):
        assert parse_lsn(text) == value
        assert format_lsn(value) == text
    assert parse_lsn("0/16b3748") == 0x16B3748


@pytest.mark.parametrize("bad", ["", "16B3748", "0/", "/1", "0/1/2", "G/1", "123456789/0", "0x1/2", "-1/2"])
def test_anything_else_is_not_a_wal_position(bad):
    with pytest.raises(ValueError):
        parse_lsn(bad)


def test_the_replica_covers_the_latest_sample_it_has_replayed_up_to():
    samples = deque([Sample(10.0, 100), Sample(10.5, 100), Sample(11.0, 250), Sample(11.5, 400)])
    assert covered_since(samples, 400) == 11.5  # caught up
    assert covered_since(samples, 999) == 11.5
    assert covered_since(samples, 300) == 11.0  # holds what the primary had at 11.0, not at 11.5
    assert covered_since(samples, 100) == 10.5  # an idle stretch counts up to its last sample
    assert covered_since(samples, 99) is None  # older than everything kept: unknown
    assert covered_since(deque(), 5) is None


TICK = 2.0**-10  # a step that floating point adds exactly, so a boundary is hit, not approached


class FakeClock:
    """A monotonic clock that moves only when a test advances it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_recent_writers_are_remembered_for_the_window_only():
    clock = FakeClock()
    writers = RecentWriters(10.0, clock)
    first, second, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    writers.add(first)
    writers.add(second)
    assert first in writers and second in writers and never not in writers
    clock.advance(6)
    writers.add(first)  # a new write restarts the window
    clock.advance(4 - TICK)
    assert first in writers and second in writers  # still inside its window
    clock.advance(TICK)
    assert first in writers and second not in writers  # its window is over, to the tick
    assert len(writers) == 1  # expired users are forgotten, so memory follows the write rate
    clock.advance(6)
    assert first not in writers and len(writers) == 0


def test_the_window_runs_on_the_monotonic_clock_by_default():
    writers = RecentWriters(60.0)
    user = uuid.uuid4()
    writers.add(user)
    assert writers.clock is time.monotonic and user in writers


def checked_replica(s: Settings, clock: FakeClock) -> ReplicaMonitor:
    """A monitor whose last check (the pools are never used here) found the replica caught up now."""
    monitor = ReplicaMonitor(None, None, None, s.replica)  # type: ignore[arg-type]
    monitor.covered_at = clock()
    return monitor


def test_a_writer_reads_from_the_primary_until_its_window_has_passed():
    s, clock = settings(), FakeClock()
    monitor = checked_replica(s, clock)
    router = ReadRouter(monitor, s.replica, clock)
    writer, other = uuid.uuid4(), uuid.uuid4()
    router.wrote(writer)
    for _ in range(2):
        assert router.choose([writer]) is Target.PRIMARY
        assert router.choose([other]) is Target.REPLICA
        assert router.choose([other, writer]) is Target.PRIMARY  # a batch with a writer in it
        clock.advance(s.replica.read_your_writes_s / 2 - TICK)
        monitor.covered_at = clock()  # the replica keeps up meanwhile
    clock.advance(2 * TICK)
    assert router.choose([writer]) is Target.REPLICA
    assert router.routes[("primary", "recent_write")] == 4
    assert router.routes[("replica", "replica_ok")] == 3


def test_the_lag_bound_ages_without_a_check_and_sends_reads_to_the_primary():
    s, clock = settings(), FakeClock()
    router = ReadRouter(checked_replica(s, clock), s.replica, clock)
    user = uuid.uuid4()
    clock.advance(s.replica.max_lag_s)
    assert router.choose([user]) is Target.REPLICA  # possibly max_lag_s behind: still within the bound
    clock.advance(TICK)
    assert router.choose([user]) is Target.PRIMARY  # no check since: it may be further behind
    assert router.routes[("primary", "replica_lagging")] == 1


def test_without_a_replica_every_read_goes_to_the_primary():
    router = ReadRouter(None, settings().replica, FakeClock())
    user = uuid.uuid4()
    router.wrote(user)
    assert router.choose([user]) is Target.PRIMARY and len(router.recent) == 0 and not router.routes


def settings(**values: str) -> Settings:
    return Settings.from_env({f"CACHESVC_{k.upper()}": v for k, v in values.items()})


def test_replica_settings_default_to_consistent_values():
    s = settings()
    assert s.replica.url == ""
    assert s.replica.read_your_writes_s >= s.replica.max_lag_s >= 2 * s.replica.check_interval_s


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"read_your_writes_s": "0.5"}, "READ_YOUR_WRITES_S must be at least"),
        ({"replica_max_lag_s": "0.3"}, "REPLICA_MAX_LAG_S must be at least twice"),
        ({"replica_timeout_s": "0"}, "must be positive"),
        ({"read_pool_size": "0"}, "READ_POOL_SIZE"),
        ({"read_database_url": "mysql://x@y/z"}, "READ_DATABASE_URL must be a postgresql:// URL"),
    ],
)
def test_inconsistent_replica_settings_are_refused(values, message):
    with pytest.raises(SettingsError, match=message):
        settings(**values)


def test_the_read_dsn_is_masked_like_the_others():
    s = settings(read_database_url="postgresql://cachesvc_app:hunter2@standby:6432/cachesvc")
    assert "hunter2" not in s.describe()["CACHESVC_READ_DATABASE_URL"]


# -- a standby that restarts: positions that go back, and reads that prove their freshness ----


STARTED = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def caught_up(position: int = 1000) -> ReplicaMonitor:
    """A monitor whose check just now found the standby at the primary's ``position``
    (half a second earlier the primary was at ``position - 200``)."""
    monitor = ReplicaMonitor(None, None, None, settings().replica)  # type: ignore[arg-type]
    now = time.monotonic()
    monitor.samples.extend([Sample(now - 0.5, position - 200), Sample(now - 0.01, position)])
    assert monitor.proves(position, STARTED, now, floor=0)
    assert monitor.usable() and monitor.high_water == position
    return monitor


def test_a_replay_position_that_goes_back_is_a_restart_and_the_replica_waits_until_caught_up():
    monitor = caught_up(1000)
    # Reopened behind (crash recovery from an older consistency point), same postmaster.
    assert not monitor.proves(800, STARTED, time.monotonic(), floor=1000)
    assert monitor.restarts == 1 and monitor.state() == "restarted" and not monitor.usable()
    assert monitor.high_water == 1000 and monitor.replay_position == 800
    assert not monitor.proves(900, STARTED, time.monotonic(), floor=monitor.high_water)
    assert not monitor.usable() and monitor.state() == "restarted"  # replaying, still short of where it had been
    assert monitor.proves(1000, STARTED, time.monotonic(), floor=1000)
    assert monitor.usable() and monitor.state() == "ok" and monitor.restarts == 1


def test_a_new_postmaster_is_a_restart_even_at_the_same_position():
    monitor = caught_up(1000)
    monitor.proves(1000, STARTED + dt.timedelta(seconds=5), time.monotonic(), floor=1000)
    assert monitor.restarts == 1 and monitor.server_started_at == STARTED + dt.timedelta(seconds=5)


def test_an_older_report_overtaken_by_a_newer_one_is_no_restart():
    monitor = caught_up(1000)
    asked_before = monitor.position_taken_at - 0.1  # a read that began before the check that saw 1000
    assert monitor.proves(800, STARTED, asked_before, floor=800)  # fresh enough for what it had to prove
    assert monitor.restarts == 0 and monitor.replay_position == 1000 and monitor.usable()
    assert not monitor.proves(800, STARTED, asked_before, floor=1000)  # but not past a later floor


def test_a_read_proves_nothing_beyond_the_lag_bound_or_without_a_position():
    monitor = caught_up(1000)
    assert not monitor.proves(None, None, time.monotonic(), floor=0)  # the server is not in recovery
    monitor.samples.clear()
    monitor.samples.append(Sample(time.monotonic() - 5, 1000))  # 1000 was the primary's 5 s ago
    assert not monitor.proves(1000, STARTED, time.monotonic(), floor=1000)


def test_reads_waiting_on_a_failed_replica_are_handed_to_the_primary_at_once():
    """Queued behind a replica batch that hangs, or inside it: once the replica is known to have
    failed, every one of them is answered by the primary, without waiting for the timeout."""

    async def run() -> tuple[int, list, int]:
        hang = asyncio.Event()

        async def on_replica(triples):
            await hang.wait()
            return [("replica", t) for t in triples]

        async def on_primary(triples):
            return [("primary", t) for t in triples]

        replica, primary = ReadBatcher(on_replica, lanes=1), ReadBatcher(on_primary, lanes=1)
        user = uuid.uuid4()
        reads = [asyncio.create_task(replica.fetch([(user, "chapter", f"k{i}")])) for i in range(5)]
        await asyncio.sleep(0.01)
        waiting = (len(replica.running), len(replica.pending))
        moved = replica.divert_to(primary)
        async with asyncio.timeout(1):
            results = await asyncio.gather(*reads)
        hang.set()  # the hung batch ends late: its answers are dropped, each read has one already
        await asyncio.sleep(0.01)
        return moved, results, waiting

    moved, results, waiting = asyncio.run(run())
    assert waiting == (1, 4)  # one batch in flight (the first read), the other four queued
    assert moved == 5
    assert [rows[0] for rows in results] == [("primary", (rows[0][1][0], "chapter", f"k{i}")) for i, rows in enumerate(results)]
