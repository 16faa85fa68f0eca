"""What every ``cachesvc`` command shares: exit codes, JSON on stdout, messages on stderr.

A command's machine-readable result is one JSON document on stdout; progress and errors go
to stderr as ``cachesvc: …`` lines (``cachesvc <command>: …`` for maintenance commands).
"""

from __future__ import annotations

import json
import sys

import msgspec

EXIT_OK = 0  # done; also: another run holds the lock, so this one did nothing
EXIT_FAILURE = 1
EXIT_USAGE = 2  # the command was asked for something it cannot do
EXIT_PROBLEMS = 3  # a check (verify, health) found problems


def _plain(obj):
    return msgspec.to_builtins(obj) if isinstance(obj, msgspec.Struct) else str(obj)


def print_json(obj) -> None:
    """The command's result on stdout (msgspec Structs by their JSON names; anything else as str)."""
    sys.stdout.write(json.dumps(_plain(obj) if isinstance(obj, msgspec.Struct) else obj, indent=2, default=_plain) + "\n")
    sys.stdout.flush()


def error(message: str, command: str | None = None) -> None:
    """A message for the operator on stderr (errors, warnings, a run that did nothing)."""
    sys.stderr.write(f"cachesvc{' ' + command if command else ''}: {message}\n")


def progress(message: str) -> None:
    """Progress on stderr, only when it is a terminal (cron mails stay quiet)."""
    if sys.stderr.isatty():
        error(message)
