"""What a failed database call means for the caller: out of time, or connection lost."""

from __future__ import annotations

import psycopg


class DatabaseTimeout(psycopg.OperationalError):
    """The database did not answer within the time budget of the request (or attempt)."""


def connection_lost(exc: psycopg.OperationalError) -> bool:
    """The attempt failed because its connection died (not a timeout, a lock wait or a conflict)."""
    if isinstance(exc, DatabaseTimeout | psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return False
    state = exc.sqlstate or ""
    return not state or state.startswith(("08", "57P"))
