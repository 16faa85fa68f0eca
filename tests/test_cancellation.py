"""Cancellation reaches whoever is cancelled (cachesvc.db.bounded, within_budget, Background).

A loop being stopped at shutdown is cancelled while it awaits bounded database work. On
Python 3.11, ``asyncio.wait_for`` swallows a cancellation that arrives in the same turn of the
event loop as the work ends (python/cpython#86296): the loop then runs on and shutdown hangs.
These tests cancel at each turn offset around the moment the work ends, so that one of them
lands inside that window whatever the interpreter's scheduling.
"""

from __future__ import annotations

import asyncio

import pytest

from cachesvc.api.context import Background
from cachesvc.db import bounded
from cachesvc.db.bounded import Bounded
from cachesvc.db.errors import DatabaseTimeout
from cachesvc.db.transaction import Budget, within_budget

OFFSETS = range(8)  # turns of the event loop between the work ending and the cancel


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def _cancel_as_work_ends(wait, offset: int) -> tuple[str, bool]:
    """Start a caller that ``wait``s on work, end the work, cancel the caller ``offset`` turns
    later: how the caller ended, and whether it went on past the wait."""
    release = asyncio.get_running_loop().create_future()
    went_on = False

    async def work():
        return await release

    async def caller():
        nonlocal went_on
        await wait(work())
        went_on = True
        await asyncio.sleep(30)  # a loop's next sleep: reached only if the cancel was swallowed

    task = asyncio.create_task(caller())
    await _turns(3)
    release.set_result("rows")
    await _turns(offset)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if not done:
        task.cancel()
        await asyncio.wait({task})
        return "ran on", went_on
    return ("cancelled" if task.cancelled() else f"ended: {task.exception()!r}"), went_on


@pytest.mark.parametrize("offset", OFFSETS)
def test_a_caller_cancelled_as_bounded_work_ends_is_cancelled(offset):
    ended, went_on = asyncio.run(_cancel_as_work_ends(lambda coro: Bounded()(coro, 10), offset))
    assert ended == "cancelled", f"the cancel was swallowed (went on past the wait: {went_on})"


@pytest.mark.parametrize("offset", OFFSETS)
def test_a_caller_cancelled_as_a_budgeted_wait_ends_is_cancelled(offset):
    ended, _ = asyncio.run(_cancel_as_work_ends(lambda coro: within_budget(coro, Budget(10)), offset))
    assert ended == "cancelled"


@pytest.mark.parametrize("offset", OFFSETS)
def test_background_stop_ends_a_loop_stopped_as_its_bounded_work_ends(offset):
    """The shutdown hang itself: a monitor-like loop, stopped as one of its checks ends."""

    async def run() -> bool:
        checked = asyncio.Event()
        release = asyncio.get_running_loop().create_future()
        call = Bounded()

        async def check():
            checked.set()
            return await release

        async def monitor():
            while True:
                await call(check(), 10)
                await asyncio.sleep(30)

        async with Background() as background:
            background.start("monitor", monitor())
            await checked.wait()
            release.set_result("position")
            await _turns(offset)
            stop = asyncio.create_task(background.stop())
            done, _ = await asyncio.wait({stop}, timeout=2)
            return bool(done)

    assert asyncio.run(run()), "Background.stop did not end: the loop swallowed its cancel"


def test_a_cancelled_caller_waits_for_its_work_to_end():
    """What a cancelled caller started does not outlive it (as with a plain await)."""

    async def run() -> list[str]:
        events: list[str] = []

        async def work():
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0.05)  # cleanup that takes a while (psycopg's cancel, say)
                events.append("work ended")

        async def caller():
            await Bounded()(work(), 10)

        task = asyncio.create_task(caller())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("caller ended")
        return events

    assert asyncio.run(run()) == ["work ended", "caller ended"]


def test_past_its_budget_the_caller_is_answered_at_once_and_drain_waits_for_the_work():
    async def run() -> tuple[float, int, bool, int]:
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        async def slow_work():
            try:
                await asyncio.sleep(30)
            finally:
                await asyncio.sleep(0.3)  # a slow cancel
                ended.set()

        started = loop.time()
        with pytest.raises(DatabaseTimeout):
            await Bounded()(slow_work(), 0.05)
        answered_in = loop.time() - started
        running = await bounded.drain(timeout=5)
        return answered_in, running, ended.is_set(), await bounded.drain(timeout=5)

    answered_in, running, ended, left = asyncio.run(run())
    assert answered_in < 0.25  # not after the work's 0.3 s cancel
    assert running == 1 and ended
    assert left == 0
