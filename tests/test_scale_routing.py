"""The pieces of read routing that need no server: WAL positions, the lag bound from samples,
the read-your-writes window, and the settings that keep the guarantees consistent."""

from __future__ import annotations

import time
import uuid
from collections import deque

import pytest

from cachesvc.replica import Sample, covered_since, format_lsn, parse_lsn
from cachesvc.routing import RecentWriters
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


def test_recent_writers_are_remembered_for_the_window_only():
    writers = RecentWriters(0.2)
    first, second, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    writers.add(first)
    writers.add(second)
    assert first in writers and second in writers and never not in writers
    time.sleep(0.12)
    writers.add(first)  # a new write restarts the window
    time.sleep(0.12)
    assert first in writers and second not in writers
    assert len(writers) == 1  # expired users are forgotten, so memory follows the write rate
    time.sleep(0.21)
    assert first not in writers and len(writers) == 0


def settings(**values: str) -> Settings:
    return Settings.from_env({f"CACHESVC_{k.upper()}": v for k, v in values.items()})


def test_replica_settings_default_to_consistent_values():
    s = settings()
    assert s.read_database_url == ""
    assert s.read_your_writes_s >= s.replica_max_lag_s >= 2 * s.replica_check_interval_s


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
