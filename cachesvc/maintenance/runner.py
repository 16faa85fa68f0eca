"""What every maintenance command shares.

* One direct connection (``CACHESVC_ADMIN_DATABASE_URL``, never PgBouncer: ``DETACH …
  CONCURRENTLY`` and session advisory locks need a session of their own), autocommit, with
  ``lock_timeout`` and ``statement_timeout`` so maintenance never stalls the service for long.
* A session advisory lock per command: a second concurrent run exits 0 saying so.
* Transient connection errors retried with bounded exponential backoff; the commands are
  idempotent, so re-running the body is safe.
* A JSON summary on stdout, progress on stderr when it is a terminal, a summary row in
  ``cache_audit_log``, and the exit codes below.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from psycopg.types.json import Jsonb

from cachesvc.settings import Settings

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_PROBLEMS = 0, 1, 2, 3

TRANSIENT = (psycopg.OperationalError, psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


class UsageError(Exception):
    """The command was asked for something it cannot do (exit 2)."""


@dataclass
class Run:
    """The context a command body gets: its connection, its options, its report."""

    command: str
    conn: psycopg.Connection
    settings: Settings
    dry_run: bool = False
    summary: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

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


def connect(settings: Settings) -> psycopg.Connection:
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
            with connect(settings) as conn:
                lock_key = f"cachesvc.maintenance.{command.split()[0]}"
                if not conn.execute("SELECT pg_try_advisory_lock(hashtextextended(%s, 0))", (lock_key,)).fetchone()[0]:
                    _emit({"command": command, "status": "already_running",
                           "message": f"another '{command.split()[0]}' run holds the lock; nothing done"})
                    return EXIT_OK
                run = Run(command, conn, settings, dry_run)
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
                _emit(report)
                return EXIT_PROBLEMS if run.problems else EXIT_OK
        except UsageError as exc:
            _emit({"command": command, "status": "usage_error", "message": str(exc)})
            return EXIT_USAGE
        except TRANSIENT as exc:
            if attempt == attempts:
                _emit({"command": command, "status": "failed", "message": f"gave up after {attempts} attempts: {exc}"})
                return EXIT_FAILURE
            sys.stderr.write(f"cachesvc {command}: transient error (attempt {attempt}/{attempts}), retrying in {delay:.1f}s: {exc}\n")
            time.sleep(delay)
            delay *= 2
        except (psycopg.Error, OSError, ValueError) as exc:
            _emit({"command": command, "status": "failed", "message": f"{type(exc).__name__}: {exc}"})
            return EXIT_FAILURE
    return EXIT_FAILURE  # not reached


def _emit(report: dict) -> None:
    sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    sys.stdout.flush()
