"""Database work awaited for at most a time budget, and cancelled in the background past it."""

from __future__ import annotations

import asyncio

from cachesvc.db.errors import DatabaseTimeout


class Bounded:
    """Awaits database work for at most a time budget.

    Past it the caller gets ``DatabaseTimeout`` at once, while the work is cancelled in the
    background (psycopg cancels the query or closes the connection; the pool replaces it).
    """

    def __init__(self) -> None:
        self._background: set[asyncio.Task] = set()

    async def __call__(self, coro, timeout: float):
        task = asyncio.ensure_future(coro)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            self._abandon(task)
            raise DatabaseTimeout(f"no answer from the database within {timeout}s") from None
        except asyncio.CancelledError:
            self._abandon(task)
            raise

    def _abandon(self, task: asyncio.Task) -> None:
        task.cancel()
        self._background.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved, so it is not reported as never retrieved
