"""A standby that restarts behind PgBouncer is never read back in time (cachesvc.db.replica).

A standby that restarts can open for reads behind where it had replayed (after a crash it
reopens at its last consistency point and replays forward again), and its PgBouncer hides the
restart from the service. Two sequences, each read through the service as fast as possible,
with and without the write's consistency token; a value older than the lag bound, or a miss,
is a stale read, and there must be none:

1. the one found from outside: write a value, let the standby replay it, write plenty of WAL
   on top, wait past the lag bound, ``kill -9`` a standby backend (the postmaster reinitialises
   and runs crash recovery). Whether it reopens behind depends on how far its consistency point
   lagged at the crash; on this machine it reopened at the position it had reached;
2. the same restart made certain to go back in time: the standby crashes (``SIGQUIT``: an
   immediate stop) and starts again from a copy of its data directory taken before the write,
   applying what it streams 30 s late (``recovery_min_apply_delay``): for the length of the
   test it answers from before the write, on the same port, with the same identity.

The primary here runs with ``synchronous_commit=on`` (the strict bound: a commit is in the WAL
the standby streams before it is acknowledged); the session stacks run with it off.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import httpx2
import psycopg
import pytest

from cachesvc.db.lsn import parse_lsn
from cachesvc.localstack import SUPERUSER, LocalStack
from cachesvc.localstack.processes import stop_process
from tests.harness import LiveService, running_service, throwaway_stack, token_maker, wait_until

MAX_LAG_S = 1.0
SERVICE = {
    "replica_max_lag_s": MAX_LAG_S, "read_your_writes_s": MAX_LAG_S, "replica_check_interval_s": 0.25,
    "replica_timeout_s": 1.0, "pool_size": 4, "read_pool_size": 4, "rate_limit_per_s": 0, "request_timeout_s": 5,
    "features_warmup": "false",
}
KILL_ATTEMPTS = 2
READ_FOR_S = 2.5


@pytest.fixture(scope="module")
def pair() -> Iterator[LocalStack]:
    with throwaway_stack("cachesvc-restart-", synchronous_commit="on") as s:
        with psycopg.connect(s.url(SUPERUSER), autocommit=True) as conn:
            assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)
            conn.execute("CREATE TABLE public.wal_filler (id bigint, pad text)")
        s.start_standby()
        s.standby.wait_replayed(s.postgres)
        yield s


@pytest.fixture(scope="module")
def service(pair, tmp_path_factory) -> Iterator[LiveService]:
    with running_service(pair, tmp_path_factory.mktemp("restart") / "service.log", **SERVICE) as live:
        wait_until(lambda: httpx2.get(live.url + "/readyz", timeout=5).json()["replica"]["state"] == "ok", 20,
                   "the replica in use")
        yield live


def standby_backend(stack: LocalStack) -> int:
    """The pid of a client backend on the standby (one of the service's, through PgBouncer)."""
    with psycopg.connect(stack.url(SUPERUSER, direct=True, standby=True), autocommit=True) as conn:
        return conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
            " ORDER BY backend_start LIMIT 1"
        ).fetchone()[0]


def write_wal(stack: LocalStack, megabytes: int = 24) -> None:
    """Plenty of WAL after the value: the standby's crash recovery has that much to replay again."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        conn.execute("TRUNCATE public.wal_filler")
        conn.execute("INSERT INTO public.wal_filler SELECT g, repeat('x', 200) FROM generate_series(1, %s) g",
                     (megabytes * 4000,))


@contextlib.contextmanager
def reading(service: LiveService, headers: dict, key: str) -> Iterator[list[tuple[int, object]]]:
    """GET the key as fast as possible until the block ends: (status, content) of each read."""
    seen: list[tuple[int, object]] = []
    stop = threading.Event()

    def loop() -> None:
        with httpx2.Client(base_url=service.url, timeout=10) as http:
            while not stop.is_set():
                res = http.get(f"/v1/cache/chapter/{key}", headers=headers)
                seen.append((res.status_code, res.json().get("content") if res.status_code == 200 else res.text))

    threads = [threading.Thread(target=loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        yield seen
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def put(service: LiveService, auth: dict, key: str, value: str) -> str:
    """Store ``value``; its consistency token."""
    res = httpx2.put(f"{service.url}/v1/cache/chapter/{key}", json={"content": value}, headers=auth, timeout=10)
    assert res.status_code in (200, 201), res.text
    return res.headers["x-consistency-token"]


def stale_reads(service: LiveService, auth: dict, key: str, value: str, token: str) -> tuple[list, list, int]:
    """Read for READ_FOR_S with and without ``token``: (stale plain reads, stale token reads, reads)."""
    with reading(service, auth, key) as plain, reading(service, auth | {"X-Consistency-Token": token}, key) as tokened:
        time.sleep(READ_FOR_S)
    stale = [[(status, content) for status, content in seen if (status, content) != (200, value)] for seen in (plain, tokened)]
    return stale[0], stale[1], len(plain) + len(tokened)


def replica_state(service: LiveService) -> dict:
    return httpx2.get(service.url + "/readyz", timeout=5).json()["replica"]


def test_a_standby_crash_restart_never_serves_a_value_older_than_the_bound(pair, service):
    auth = {"Authorization": f"Bearer {token_maker(pair)(uuid.uuid4())}"}
    key = f"crash-{uuid.uuid4()}"
    for attempt in range(KILL_ATTEMPTS):
        value = f"v{attempt}"
        token = put(service, auth, key, value)
        written_at = time.monotonic()
        write_wal(pair)
        pair.standby.wait_replayed(pair.postgres)
        time.sleep(max(0.0, MAX_LAG_S * 1.5 - (time.monotonic() - written_at)))  # the old value is now beyond the bound
        os.kill(standby_backend(pair), signal.SIGKILL)
        plain, tokened, reads = stale_reads(service, auth, key, value, token)
        assert plain == [] and tokened == [], f"stale of {reads}: {plain[:3]} / {tokened[:3]}"
        pair.standby.wait_replayed(pair.postgres)
        wait_until(lambda: replica_state(service)["state"] == "ok", 20, "the replica back")


def test_a_standby_restarted_from_an_older_copy_is_never_read_until_it_has_caught_up(pair, service):
    standby = pair.standby.postgres
    auth = {"Authorization": f"Bearer {token_maker(pair)(uuid.uuid4())}"}
    key = f"older-copy-{uuid.uuid4()}"
    put(service, auth, key, "old")
    pair.standby.wait_replayed(pair.postgres)
    copy = standby.base / "older-copy"
    standby.stop()
    subprocess.run(["cp", "-a", str(standby.datadir), str(copy)], check=True)
    standby.start()
    wait_until(lambda: replica_state(service)["state"] == "ok", 20, "the replica back after the copy")

    token = put(service, auth, key, "new")
    write_wal(pair)
    pair.standby.wait_replayed(pair.postgres)
    time.sleep(MAX_LAG_S * 1.5)
    restarts = replica_state(service)["restarts"]
    # A crash, and the older copy started in its place (its PgBouncer reconnects to it).
    stop_process(standby.proc, signal.SIGQUIT)
    shutil.rmtree(standby.datadir)
    copy.rename(standby.datadir)
    conf = standby.conf
    standby.conf = conf | {"recovery_min_apply_delay": "30s"}
    try:
        standby.start()
        with psycopg.connect(pair.url(SUPERUSER, direct=True, standby=True), autocommit=True) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
            behind = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()[0]
        assert behind < parse_lsn(token), "the copy is not behind the write"
        plain, tokened, reads = stale_reads(service, auth, key, "new", token)
        assert plain == [] and tokened == [], f"stale of {reads}: {plain[:3]} / {tokened[:3]}"
        state = replica_state(service)
        assert state["restarts"] > restarts and state["state"] != "ok", state
    finally:
        standby.stop()
        standby.conf = conf
        standby.start()
    pair.standby.wait_replayed(pair.postgres)
    wait_until(lambda: replica_state(service)["state"] == "ok", 30, "the replica caught up again")
    assert httpx2.get(f"{service.url}/v1/cache/chapter/{key}", headers=auth, timeout=10).json()["content"] == "new"
