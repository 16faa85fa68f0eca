"""Coalesced reads: concurrent reads, of any callers, answered by one statement.

A read asks for a list of items and awaits one row per item. At most ``lanes`` batch
transactions run at once; while they are busy, new reads queue, and the next free lane takes
the oldest queued read and every read queued after it of the same shape (up to ``max_items``
items) in one transaction. At low load a read goes out alone at once (no added wait); under
load, one round trip and one statement serve many requests, which is what lets the service do
less database work per request than one transaction per request.

Two readers use it: the cache store (items are (user, content type, key) triples, all of one
shape) and feature lookups (cachesvc.features.service: items are (key, tables) pairs, and the
shape is the set of tables, since the statement's columns depend on it). A read's items carry
everything its runner needs, so a read moved to another batcher (``divert_to``) keeps its shape.

Isolation of cache reads: the batch transaction sets ``cachesvc.user_ids`` to exactly the
users in the batch, so row-level security admits those users' rows and no one else's; within
the batch, each row is matched to its request by the full (user, content type, key) triple in
the statement itself and handed back by ordinal. Batch transactions are read-only: the write
policies require the single ``cachesvc.user_id``, which they never set.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any

Triple = tuple[uuid.UUID, str, str]
Rows = list[Any]  # one per item, in the items' order (a cache read's row, or None on a miss)
Request = tuple[Sequence[Any], asyncio.Future, Hashable]  # items, the caller's answer, shape


def _one_shape(items: Sequence[Any]) -> None:
    return None


class ReadBatcher:
    """``run(items)`` answers the items of one batch, all of one shape; ``shape_of(items)``:
    what a read's statement depends on besides its items (reads of different shapes never
    share a batch; by default every read has the same shape)."""

    def __init__(
        self, run: Callable[[list[Any]], Awaitable[Rows]], lanes: int, max_items: int = 500,
        *, shape_of: Callable[[Sequence[Any]], Hashable] = _one_shape,
    ) -> None:
        self.run = run
        self.lanes = lanes
        self.max_items = max_items
        self.shape_of = shape_of
        self.pending: deque[Request] = deque()
        self.running: list[list[Request]] = []  # batches in flight
        self.inflight = 0
        self.batches = 0
        self.coalesced = 0  # requests that shared a batch with another
        self._tasks: set[asyncio.Task] = set()  # the batches' tasks, referenced while they run

    async def fetch(self, items: Sequence[Any]) -> Rows:
        return await self._enqueue(items)

    def _enqueue(self, items: Sequence[Any]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((items, future, self.shape_of(items)))
        self._start()
        return future

    def divert_to(self, other: ReadBatcher) -> int:
        """Hand every read still waiting here, queued or in a batch still running, to ``other``
        (its server failed: the reads need not wait for its timeout); returns how many. Each
        read takes whichever answer comes first, the other's or a late one from here."""
        waiting = [r for r in (*self.pending, *(r for batch in self.running for r in batch)) if not r[1].done()]
        self.pending.clear()
        for items, future, _ in waiting:
            other._enqueue(items).add_done_callback(lambda answer, future=future: _settle(future, answer))
        return len(waiting)

    def _start(self) -> None:
        while self.pending and self.inflight < self.lanes:
            batch = self._take()
            if not batch:
                return
            self.inflight += 1
            self.batches += 1
            if len(batch) > 1:
                self.coalesced += len(batch)
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[Request]:
        """The oldest waiting read and the reads queued after it of its shape, in order, up to
        ``max_items`` items (a read bigger than that goes alone); the others keep their places."""
        batch: list[Request] = []
        size, shape, others = 0, None, deque()
        while self.pending:
            request = self.pending.popleft()
            if request[1].done():  # its caller went away
                continue
            if batch and request[2] != shape:
                others.append(request)
                continue
            if batch and size + len(request[0]) > self.max_items:
                others.append(request)  # the batch is full: this one and the rest wait, in order
                others.extend(self.pending)
                self.pending.clear()
                break
            batch.append(request)
            size += len(request[0])
            shape = request[2]
        self.pending.extend(others)  # emptied above
        return batch

    async def _run(self, batch: list[Request]) -> None:
        self.running.append(batch)
        try:
            rows = await self.run([item for items, _, _ in batch for item in items])
            at = 0
            for items, future, _ in batch:
                if not future.done():
                    future.set_result(rows[at : at + len(items)])
                at += len(items)
        except BaseException as exc:
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self.running.remove(batch)
            self.inflight -= 1
            self._start()


def _settle(future: asyncio.Future, answer: asyncio.Future) -> None:
    """``future`` takes ``answer``'s outcome, unless it already has one."""
    if future.done() or answer.cancelled():
        return
    if (exc := answer.exception()) is not None:
        future.set_exception(exc)
    else:
        future.set_result(answer.result())
