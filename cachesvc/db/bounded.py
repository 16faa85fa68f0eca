"""Database work awaited for at most a time budget, and cancelled in the background past it.

Work abandoned past its budget is still owned: ``drain`` waits for what this event loop
abandoned to end, and the service's lifecycle calls it before the pools close, so that no
task is left running against a closed pool.
"""

from __future__ import annotations

import asyncio

from cachesvc.db.errors import DatabaseTimeout

# Tasks cancelled past their budget and not ended yet, of every Bounded (each belongs to one loop).
_abandoned: set[asyncio.Task] = set()


class Bounded:
    """Awaits database work for at most a time budget.

    Past it the caller gets ``DatabaseTimeout`` at once, while the work is cancelled in the
    background (psycopg cancels the query or closes the connection; the pool replaces it).
    A caller that is itself cancelled waits for the work's cancellation to end, as a plain
    ``await`` would, so that what it started does not outlive it.
    """

    async def __call__(self, coro, timeout: float):
        task = asyncio.ensure_future(coro)
        try:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for swallows a cancellation
            # that arrives as the work ends (python/cpython#86296), and a loop being stopped
            # would run on.
            async with asyncio.timeout(timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            _abandon(task)
            raise DatabaseTimeout(f"no answer from the database within {timeout}s") from None
        except asyncio.CancelledError:
            task.cancel()
            await asyncio.wait({task})  # a second cancel of the caller still ends here or sooner
            _retrieve(task)
            raise


def _abandon(task: asyncio.Task) -> None:
    task.cancel()
    _abandoned.add(task)
    task.add_done_callback(_finished)


def _finished(task: asyncio.Task) -> None:
    _abandoned.discard(task)
    _retrieve(task)


def _retrieve(task: asyncio.Task) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so it is not reported as never retrieved


async def drain(timeout: float = 5.0) -> int:
    """Wait up to ``timeout`` for the work this loop abandoned to end; how many were still running."""
    loop = asyncio.get_running_loop()
    mine = {task for task in _abandoned if task.get_loop() is loop}
    if mine:
        await asyncio.wait(mine, timeout=timeout)
    return len(mine)
