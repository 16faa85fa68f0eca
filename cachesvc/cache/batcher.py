"""Coalesced reads: concurrent GETs and lookups, of any users, answered by one statement.

A read asks for a list of (user, content type, key) triples and awaits its rows. At most
``lanes`` batch transactions run at once; while they are busy, new reads queue, and the next
free lane takes everything queued (up to ``max_items`` triples) in one transaction. At low load
a read goes out alone at once (no added wait); under load, one round trip and one statement
serve many requests, which is what lets the service do less database work per GET than one
transaction per request.

Isolation: the batch transaction sets ``cachesvc.user_ids`` to exactly the users in the batch,
so row-level security admits those users' rows and no one else's; within the batch, each row
is matched to its request by the full (user, content type, key) triple in the statement itself
and handed back by ordinal. Batch transactions are read-only: the write policies require the
single ``cachesvc.user_id``, which they never set.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence

Triple = tuple[uuid.UUID, str, str]
Rows = list[tuple | None]


class ReadBatcher:
    def __init__(self, run: Callable[[list[Triple]], Awaitable[Rows]], lanes: int, max_items: int = 500) -> None:
        self.run = run
        self.lanes = lanes
        self.max_items = max_items
        self.pending: deque[tuple[Sequence[Triple], asyncio.Future]] = deque()
        self.running: list[list[tuple[Sequence[Triple], asyncio.Future]]] = []  # batches in flight
        self.inflight = 0
        self.batches = 0
        self.coalesced = 0  # requests that shared a batch with another

    async def fetch(self, triples: Sequence[Triple]) -> Rows:
        return await self._enqueue(triples)

    def _enqueue(self, triples: Sequence[Triple]) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((triples, future))
        self._start()
        return future

    def divert_to(self, other: ReadBatcher) -> int:
        """Hand every read still waiting here, queued or in a batch still running, to ``other``
        (its server failed: the reads need not wait for its timeout); returns how many. Each
        read takes whichever answer comes first, the other's or a late one from here."""
        waiting = [r for r in (*self.pending, *(r for batch in self.running for r in batch)) if not r[1].done()]
        self.pending.clear()
        for triples, future in waiting:
            other._enqueue(triples).add_done_callback(lambda answer, future=future: _settle(future, answer))
        return len(waiting)

    def _start(self) -> None:
        while self.pending and self.inflight < self.lanes:
            batch, size = [], 0
            while self.pending and (not batch or size + len(self.pending[0][0]) <= self.max_items):
                request = self.pending.popleft()
                if request[1].done():  # its caller went away
                    continue
                batch.append(request)
                size += len(request[0])
            if not batch:
                return
            self.inflight += 1
            self.batches += 1
            if len(batch) > 1:
                self.coalesced += len(batch)
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[Sequence[Triple], asyncio.Future]]) -> None:
        self.running.append(batch)
        try:
            rows = await self.run([t for triples, _ in batch for t in triples])
            at = 0
            for triples, future in batch:
                if not future.done():
                    future.set_result(rows[at : at + len(triples)])
                at += len(triples)
        except BaseException as exc:
            for _, future in batch:
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
