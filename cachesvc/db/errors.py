"""What a failed database call means for the caller: out of time, or connection lost."""

from __future__ import annotations

import psycopg


class DatabaseTimeout(psycopg.OperationalError):
    """The database did not answer within the time budget of the request (or attempt)."""


# PgBouncer, while it holds no server connection and its last login to the server failed,
# fails a client that asks for one at once and closes its connection, before anything is sent
# to the server (1.18: "pgbouncer cannot connect to server"; 1.21 and later: "server login
# has been failing, try again later (server_login_retry)"). After the server comes back, the
# first clients meet that until a login succeeds; the first of them makes PgBouncer try one,
# once ``server_login_retry`` has passed since the last failure.
BOUNCER_REFUSALS = ("pgbouncer cannot connect to server", "server login has been failing")


def bouncer_refused(exc: psycopg.OperationalError) -> bool:
    """PgBouncer turned the attempt away before it reached the server (safe to send again)."""
    text = str(exc)
    return any(refusal in text for refusal in BOUNCER_REFUSALS)


def connection_lost(exc: psycopg.OperationalError) -> bool:
    """The attempt failed because its connection died (not a timeout, a lock wait or a conflict)."""
    if isinstance(exc, DatabaseTimeout | psycopg.errors.QueryCanceled | psycopg.errors.LockNotAvailable):
        return False
    state = exc.sqlstate or ""
    return not state or state.startswith(("08", "57P"))
