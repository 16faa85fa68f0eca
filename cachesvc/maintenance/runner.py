"""What every maintenance command shares.

* One direct connection (``CACHESVC_ADMIN_DATABASE_URL``, never PgBouncer: ``DETACH …
  CONCURRENTLY`` and session advisory locks need a session of their own), autocommit, with
  ``lock_timeout`` and ``statement_timeout`` so maintenance never stalls the service for long.
* Session advisory locks, one per set of objects (``LOCKS``): a command takes the lock of
  every set it changes, so two commands that touch the same objects never run at once, and
  a second concurrent run exits 0 saying so.
* Transient connection errors retried with bounded exponential backoff; the commands are
  idempotent, so re-running the body is safe.
* A JSON summary on stdout, progress on stderr when it is a terminal (a run that did
  nothing or failed also says why there), a summary row in ``cache_audit_log``, and the exit
  codes of ``cachesvc.clikit``.
* ``command()`` binds a subcommand to ``execute``; every command so bound has its entry in
  ``LOCKS``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from cachesvc import clikit
from cachesvc.clikit import EXIT_FAILURE, EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from cachesvc.settings import DatabaseSettings, Settings

TRANSIENT = (psycopg.OperationalError, psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


class UsageError(Exception):
    """The command was asked for something it cannot do (exit 2)."""


class LockHeld(Exception):
    """A lock the body asked for (``Run.lock``) is held by another run: nothing is done (exit 0)."""

    def __init__(self, name: str, scope: str, summary: dict) -> None:
        super().__init__(name, scope)
        self.name, self.scope, self.summary = name, scope, summary


# The sets of objects that maintenance changes, each guarded by one session advisory lock
# ``cachesvc.maintenance.<name>``.
PARTITIONS_LOCK = "partitions"  # months made ahead, past cache months dropped
AUDIT_LOCK = "audit"  # past audit months and their archive files: export, detach, drop, restore
CLEANUP_LOCK = "cleanup"  # expired cache rows, deleted in batches through the parent
FEATURES_LOCK = "features"  # one feature table, replaced by a load (taken per table)


@dataclass(frozen=True)
class Locks:
    """The locks a command takes before its body runs.

    All of ``required``, or the command does nothing and exits 0 saying which lock is held.
    Each of ``optional`` if it is free; if not, the body skips the work under it (and says
    so, see ``Run.holds``) instead of racing the command that holds it. Each of ``scoped``
    is taken by the body for the one object it works on (``Run.lock``): runs on different
    objects go on side by side, a second run on the same object does nothing and exits 0.
    """

    required: tuple[str, ...]
    optional: tuple[str, ...] = ()
    scoped: tuple[str, ...] = ()


# Two commands that touch the same objects take the same lock (docs: Operations).
# cleanup and `partitions retire` both reach cache months, but never conflict: cleanup
# deletes only expired rows through the parent, retire drops only months with no live row
# (checked again after DETACH), and PostgreSQL's own locks order DETACH/DROP after a batch.
# Sharing a lock would make the daily retire step aside whenever the hourly cleanup runs.
LOCKS: dict[str, Locks] = {
    "partitions ensure": Locks((PARTITIONS_LOCK,)),
    "partitions retire": Locks((PARTITIONS_LOCK,), optional=(AUDIT_LOCK,)),
    "cleanup": Locks((CLEANUP_LOCK,)),
    "audit archive": Locks((AUDIT_LOCK,)),
    "audit restore": Locks((AUDIT_LOCK,)),
    "verify": Locks(("verify",)),  # read only: only against a second verify
    "health partitions": Locks(("health",)),  # read only
    "features load": Locks((), scoped=(FEATURES_LOCK,)),  # per table: loads of two tables run at once
}


def lock_key(name: str, scope: str | None = None) -> str:
    return f"cachesvc.maintenance.{name}" + (f":{scope}" if scope else "")


def takers(name: str) -> list[str]:
    """The commands that take lock ``name``."""
    return [command for command, locks in LOCKS.items() if name in locks.required + locks.optional + locks.scoped]


@dataclass
class Run:
    """The context a command body gets: its connection, its options, its report."""

    command: str
    conn: psycopg.Connection
    settings: Settings
    dry_run: bool = False
    summary: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    held: frozenset[str] = frozenset()

    def holds(self, lock: str) -> bool:
        """Whether this run holds ``lock``; if not, the summary says who may hold it."""
        if lock in self.held:
            return True
        self.summary.setdefault("locksNotHeld", {})[lock] = f"held by another run of {' or '.join(takers(lock))}"
        return False

    def lock(self, name: str, scope: str, *, busy: dict) -> None:
        """Take the scoped lock ``name`` for ``scope``; if another run holds it, end this run
        (exit 0) with ``busy`` in its summary."""
        if not _try_lock(self.conn, name, scope):
            raise LockHeld(name, scope, busy)

    def progress(self, message: str, done: int | None = None, total: int | None = None) -> None:
        if not sys.stderr.isatty():
            return
        if done is not None and total:
            width = 30
            filled = int(width * min(done, total) / total)
            bar = "#" * filled + "." * (width - filled)
            sys.stderr.write(f"\r[{bar}] {done}/{total} {message}\033[K")
        else:
            sys.stderr.write(f"\r{message}\033[K")
        sys.stderr.flush()


def fault_point(name: str) -> None:
    """Die here, like a power cut, when CACHESVC_FAULT_KILL_AT names this point.

    Used by the crash-safety tests to kill a command at exact instants; a no-op otherwise.
    """
    if os.environ.get("CACHESVC_FAULT_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def connect(settings: DatabaseSettings) -> psycopg.Connection:
    conn = psycopg.connect(
        settings.admin_database_url,
        autocommit=True,
        connect_timeout=settings.connect_timeout_s,
        application_name="cachesvc-maintenance",
    )
    conn.execute("SET lock_timeout = '5s'")
    conn.execute("SET statement_timeout = '10min'")
    conn.execute("SET idle_in_transaction_session_timeout = '5min'")
    return conn


def _try_lock(conn: psycopg.Connection, name: str, scope: str | None = None) -> bool:
    return conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key(name, scope),)).fetchone()[0]


def record(conn: psycopg.Connection, command: str, status: str, details: dict) -> None:
    """The summary row every run leaves in the audit log (what health and alerts read)."""
    conn.execute(
        "INSERT INTO cache_audit_log (actor, action, details) VALUES (%s, %s, %s)",
        (
            f"cachesvc {command}",
            f"maintenance.{command.replace(' ', '_')}",
            Jsonb({"status": status} | details, dumps=lambda obj: json.dumps(obj, default=str)),
        ),
    )


def execute(
    command: str,
    settings: Settings,
    body: Callable[[Run], None],
    *,
    dry_run: bool = False,
    attempts: int = 5,
    first_delay: float = 0.5,
) -> int:
    """Run ``body`` under the command's lock with retries; print the summary; return the exit code."""
    started = time.monotonic()
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            with connect(settings.database) as conn:  # closing it releases every lock taken on it
                locks = LOCKS.get(command, Locks((command.split()[0],)))
                busy = next((name for name in locks.required if not _try_lock(conn, name)), None)
                if busy is not None:
                    return _already_running(command, busy)
                held = frozenset(locks.required) | {name for name in locks.optional if _try_lock(conn, name)}
                run = Run(command, conn, settings, dry_run, held=held)
                body(run)
                if sys.stderr.isatty():
                    sys.stderr.write("\n")
                status = "problems" if run.problems else "ok"
                report = {"command": command, "status": status, "dryRun": dry_run,
                          "seconds": round(time.monotonic() - started, 3), **run.summary}
                if run.problems:
                    report["problems"] = run.problems
                # The per-partition health table is for the reader, not for the log.
                kept = {k: v for k, v in report.items() if k not in ("command", "status", "partitions")}
                record(conn, command, status, kept)
                clikit.print_json(report)
                return EXIT_PROBLEMS if run.problems else EXIT_OK
        except LockHeld as held:
            return _already_running(command, held.name, held.scope, held.summary)
        except UsageError as exc:
            return _ended(command, "usage_error", str(exc), EXIT_USAGE)
        except TRANSIENT as exc:
            if attempt == attempts:
                return _ended(command, "failed", f"gave up after {attempts} attempts: {exc}", EXIT_FAILURE)
            clikit.error(f"transient error (attempt {attempt}/{attempts}), retrying in {delay:.1f}s: {exc}", command)
            time.sleep(delay)
            delay *= 2
        except (psycopg.Error, OSError, ValueError) as exc:
            return _ended(command, "failed", f"{type(exc).__name__}: {exc}", EXIT_FAILURE)
    return EXIT_FAILURE  # not reached


def _already_running(command: str, lock: str, scope: str | None = None, summary: dict | None = None) -> int:
    held = f"the '{lock}' lock" + (f" of {scope}" if scope else "")
    message = f"{held} is held by another run of {' or '.join(takers(lock)) or command}; nothing done"
    return _ended(command, "already_running", message, EXIT_OK, {"lock": lock, **(summary or {})})


def _ended(command: str, status: str, message: str, code: int, fields: dict | None = None) -> int:
    """A run that did nothing or failed: its report on stdout, and why on stderr."""
    clikit.print_json({"command": command, "status": status, **(fields or {}), "message": message})
    clikit.error(message, command)
    return code


def command(
    parser: argparse.ArgumentParser, name: str, body: Callable[[argparse.Namespace, Settings], Callable[[Run], None]]
) -> None:
    """Make the subcommand ``parser`` run ``name`` through ``execute``, with the body that
    ``body(args, settings)`` returns (and ``--dry-run`` if the parser has it)."""
    parser.set_defaults(
        func=lambda args, settings: execute(name, settings, body(args, settings), dry_run=getattr(args, "dry_run", False)),
        maintenance_command=name,
    )
