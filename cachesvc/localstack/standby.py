"""A hot standby of a LocalPostgres: ``pg_basebackup -R``, then streaming replication."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg

from cachesvc.localstack.pgbouncer import LocalPgBouncer
from cachesvc.localstack.postgres import LocalPostgres, find_pg_bindir
from cachesvc.localstack.processes import StackError, as_user, give, run_as

# The login a standby streams WAL with: REPLICATION, nothing else (no superuser, no data).
REPLICATOR = "cachesvc_replicator"


def base_backup(primary: LocalPostgres, datadir: Path, user: str, password: str) -> None:
    """``pg_basebackup -R`` of ``primary`` into ``datadir``: a standby's data directory.

    ``-R`` writes ``standby.signal`` and ``primary_conninfo``; ``-X stream`` streams the WAL
    written during the copy, so the copy is consistent on its own.
    """
    owner = run_as()
    datadir.parent.mkdir(parents=True, exist_ok=True)
    give(datadir.parent, owner)
    result = subprocess.run(
        [
            str(find_pg_bindir() / "pg_basebackup"), "-D", str(datadir), "-R", "-X", "stream",
            "--checkpoint=fast", "-h", "127.0.0.1", "-p", str(primary.port), "-U", user, "--no-password",
        ],
        capture_output=True, text=True, env=os.environ | {"PGPASSWORD": password}, **as_user(owner),
    )
    if result.returncode != 0:
        raise StackError(f"pg_basebackup failed:\n{result.stdout}{result.stderr}")


@dataclass
class LocalStandby:
    """A hot standby of a LocalPostgres (its own data directory and port) and its PgBouncer."""

    postgres: LocalPostgres
    bouncer: LocalPgBouncer

    def start(self) -> None:
        self.postgres.start()
        self.bouncer.start()

    def stop(self) -> None:
        self.bouncer.stop()
        self.postgres.stop()

    def replay_lsn(self) -> int:
        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            return conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()[0]

    def wait_replayed(self, primary: LocalPostgres, timeout: float = 30) -> None:
        """Wait until the standby has replayed every transaction the primary has committed so far.

        A throwaway primary runs with synchronous_commit off, so a commit may still sit in the
        WAL buffers: a synchronous commit of a transaction that wrote WAL (a temporary table,
        gone at its commit) first writes out everything before it.
        """
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute("CREATE TEMPORARY TABLE wal_flush () ON COMMIT DROP")
            target = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        deadline = time.monotonic() + timeout
        while self.replay_lsn() < target:
            if time.monotonic() > deadline:
                raise StackError(f"standby has not replayed the primary's WAL after {timeout}s")
            time.sleep(0.02)
