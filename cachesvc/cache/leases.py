"""Generate-once: when many callers miss one (user, content type, key) at once, one generates.

``POST /v1/leases/{contentType}/{key}`` answers the entry when it is there (``hit``), else a
lease to the first caller (``granted``: it generates and PUTs), else ``wait`` to the others,
after long-polling up to ``waitMs`` for the holder's PUT. A lease is a row of
``cache_leases`` (sql/tables/cache_leases.v1.sql), so it holds across service processes and
through PgBouncer in transaction mode, where a session advisory lock would not; it lasts
``leaseSeconds`` and is released by the entry's PUT, by its holder's ``DELETE`` (the
generation failed), or by expiring (the holder died). Each attempt is one short write
transaction on the primary, under the user's row-level security, serialised with the PUTs of
the same key by the key's advisory lock; no connection is held while a caller waits.

Waiting: a PUT through this process wakes its waiters at once (``Waiters``); a PUT through
another process is seen by the next poll, 50 ms after the first and backing off to 500 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from cachesvc.auth import Actor
from cachesvc.cache.models import CacheEntry
from cachesvc.cache.statements import GET, LOCK_KEY
from cachesvc.cache.store import CacheStore
from cachesvc.db.transaction import Budget

FIRST_POLL_S, LAST_POLL_S = 0.05, 0.5

# The lease of the key, if any: read before TAKE (the holder before this attempt, to tell a
# lease taken over after expiry) and after it (who holds it now, when TAKE took nothing).
HOLDER = """
SELECT expires_at FROM cache_leases WHERE user_id = %(user)s AND content_type = %(ct)s AND cache_key = %(key)s
"""

# Taken when the key has no live entry, and no lease or an expired one.
TAKE = """
INSERT INTO cache_leases AS l (user_id, content_type, cache_key, lease_id, expires_at)
SELECT %(user)s, %(ct)s, %(key)s, %(lease)s, now() + make_interval(secs => %(secs)s)
 WHERE NOT EXISTS (SELECT 1 FROM infinite_pages_cache_partitioned
                    WHERE user_id = %(user)s AND content_type = %(ct)s AND cache_key = %(key)s AND expires_at > now())
ON CONFLICT (user_id, content_type, cache_key) DO UPDATE
   SET lease_id = excluded.lease_id, granted_at = now(), expires_at = excluded.expires_at
 WHERE l.expires_at <= now()
RETURNING lease_id, expires_at
"""

RELEASE = """
DELETE FROM cache_leases
 WHERE user_id = %(user)s AND content_type = %(ct)s AND cache_key = %(key)s AND lease_id = %(lease)s
RETURNING 1
"""


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # "hit", "granted" or "wait"
    entry: CacheEntry | None = None
    lease_id: uuid.UUID | None = None
    expires_at: dt.datetime | None = None
    # How it came about, for the metrics: hit, served (another caller's generation, waited
    # for), granted, taken_over (the previous holder's lease had expired), wait.
    kind: str = ""


class Waiters:
    """Callers of this process waiting on a key, woken when a write of the key goes through it.
    A key is kept only while someone waits on it."""

    def __init__(self) -> None:
        self._keys: dict[tuple[uuid.UUID, str, str], tuple[asyncio.Event, int]] = {}

    def notify(self, user_id: uuid.UUID, content_type: str, key: str) -> None:
        if (waiting := self._keys.get((user_id, content_type, key))) is not None:
            waiting[0].set()

    async def wait(self, user_id: uuid.UUID, content_type: str, key: str, timeout: float) -> None:
        """Until the key is written through this process, or ``timeout`` (whichever first)."""
        name = (user_id, content_type, key)
        event, count = self._keys.get(name, (None, 0))
        if event is None or event.is_set():
            event = asyncio.Event()
        self._keys[name] = (event, count + 1)
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await event.wait()
        finally:
            event, count = self._keys[name]
            if count <= 1:
                del self._keys[name]
            else:
                self._keys[name] = (event, count - 1)

    def __len__(self) -> int:
        return len(self._keys)


class Leases:
    """Takes, waits for and releases leases, in transactions the store runs as the user."""

    def __init__(self, store: CacheStore, request_timeout_s: float, count: Callable[[str], None] = lambda kind: None) -> None:
        self.store = store
        self.request_timeout_s = request_timeout_s
        self.count = count  # cachesvc_leases_total{outcome}
        self.waiters = Waiters()

    async def acquire(self, actor: Actor, content_type: str, key: str, lease_s: int, wait_s: float) -> Outcome:
        """One attempt, then, while another caller holds the lease, one more per wake-up or
        poll until ``wait_s`` has passed. Each attempt has a request budget of its own: the
        wait may be longer than one request's budget, and holds no connection."""
        deadline = time.monotonic() + wait_s
        poll = FIRST_POLL_S
        waited = False
        while True:
            outcome = await self._attempt(actor, content_type, key, lease_s, waited)
            left = deadline - time.monotonic()
            if outcome.status != "wait" or left <= 0:
                self.count(outcome.kind)
                return outcome
            waited = True
            await self.waiters.wait(actor.user_id, content_type, key, min(poll, left))
            poll = min(poll * 2, LAST_POLL_S)

    async def _attempt(self, actor: Actor, content_type: str, key: str, lease_s: int, waited: bool) -> Outcome:
        user = actor.user_id
        params = {"user": user, "ct": content_type, "key": key, "lease": uuid.uuid4(), "secs": lease_s}
        # Not retried: a TAKE whose COMMIT was lost would find its own lease held, and wait on it.
        _, live, previous, taken, holder = await self.store.run_as(
            user,
            [(LOCK_KEY, (str(user), content_type, key)), (GET, (user, content_type, key)),
             (HOLDER, params), (TAKE, params), (HOLDER, params)],
            retry=False, budget=Budget(self.request_timeout_s),
        )
        if live:
            return Outcome("hit", entry=self.store.count_hit(user, live[0]), kind="served" if waited else "hit")
        if taken:
            self.store.counters.miss(user, content_type)
            lease_id, expires_at = taken[0]
            return Outcome("granted", lease_id=lease_id, expires_at=expires_at, kind="taken_over" if previous else "granted")
        return Outcome("wait", expires_at=holder[0][0] if holder else None, kind="wait")

    async def release(self, actor: Actor, content_type: str, key: str, lease_id: uuid.UUID) -> bool:
        """The holder gives its lease up (its generation failed): waiters take over at once."""
        params = {"user": actor.user_id, "ct": content_type, "key": key, "lease": lease_id}
        (rows,) = await self.store.run_as(actor.user_id, [(RELEASE, params)], retry=False)
        if rows:
            self.count("released")
            self.waiters.notify(actor.user_id, content_type, key)
        return bool(rows)
