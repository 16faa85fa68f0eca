"""The cache store: runs the statements of statements.py and maps their rows, one transaction each.

Every transaction is ``BEGIN; set_config(user, timeouts); <statements>; COMMIT``, sent by the
one runner (cachesvc.db.transaction) as one simple-protocol query string within the request's
time budget: one network round trip, and with PgBouncer in transaction mode the user setting
lives and dies with the transaction. Reads go through the batcher (batcher.py), which lets
concurrent reads of several users share one transaction. Row-level security is the wall; the explicit ``user_id = …`` in every statement is the second
one (and lets the planner use the lookup index directly).

A read, in one line: the router chooses its server once (``ReadRouter.choose``), the read joins
that server's batcher, and the batch runs there through ``Reads.run`` (cachesvc.db.routing),
which runs it again on the primary if the replica fails it. Writes always go to the primary,
and each returns the primary's WAL position after its COMMIT: the consistency token a client
may send back with a read (a replica serves it only once it has replayed that far).

The semantic cache (docs/semantic.md) needs pgvector: an ``embedding`` column that migration
0008 adds only where the extension exists. The store looks for it once (again after a minute
while it is missing) and renders its statements with the extension's schema; without it,
a PUT with an embedding and a similarity search raise ``SemanticUnavailable``.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
import uuid
from collections.abc import Sequence

import msgspec
from psycopg import errors
from psycopg_pool import AsyncConnectionPool

from cachesvc.auth import Actor
from cachesvc.cache import rawjson
from cachesvc.db.batcher import ReadBatcher, Triple
from cachesvc.cache.counters import Counters
from cachesvc.cache.statements import (
    BATCH_GET,
    BEGIN_ERASURE,
    DELETE,
    EMBEDDING_TYPE_SCHEMA,
    ERASE,
    GET,
    JSONB_REFUSALS,
    LOCK_KEY,
    LOOKUP,
    PUT,
    RECHECK_MISSING_S,
    STATS,
    SemanticStatements,
    SemanticUnavailable,
    WAL_POSITION,
    sign_bits,
    vector_literal,
)
from cachesvc.cache.models import (
    CacheEntry,
    ContentTypeStats,
    LookupItem,
    PutEntry,
    SimilarResult,
    StatsResponse,
)
from cachesvc.db.lsn import format_lsn
from cachesvc.db.routing import ReadRouter, Reads, Target
from cachesvc.db.transaction import Budget, Transactions, within_budget
from cachesvc.settings import DatabaseSettings, ReplicaSettings

def _entry(row: Sequence) -> tuple[tuple[int, dt.datetime], CacheEntry]:
    (id_, created_at, content_type, key, content, metadata, tokens, cost, model, hits, accessed, expires) = row[:12]
    entry = CacheEntry(
        content_type=content_type,
        key=key,
        content=msgspec.Raw(content.encode()),
        metadata=msgspec.Raw(metadata.encode()),
        token_count=tokens,
        cost_usd=cost,
        model=model,
        hit_count=hits,
        created_at=created_at,
        last_accessed_at=accessed,
        expires_at=expires,
    )
    return (id_, created_at), entry


def _acting_as(user_id: uuid.UUID) -> list[tuple[str, str]]:
    """The transaction-local setting that row-level security reads: one user."""
    return [("cachesvc.user_id", str(user_id))]


def _reading_for(users: Sequence[uuid.UUID]) -> list[tuple[str, str]]:
    """A coalesced read's setting: exactly the users of the batch (read-only; see batcher.py)."""
    return [("cachesvc.user_ids", ",".join(sorted({str(u) for u in users})))]


class CacheStore:
    def __init__(
        self,
        pool: AsyncConnectionPool,
        settings: DatabaseSettings,
        counters: Counters,
        on_retry=lambda: None,
        *,
        read_pool: AsyncConnectionPool | None = None,
        router: ReadRouter | None = None,
    ) -> None:
        self.pool = pool
        self.router = router or ReadRouter(None, ReplicaSettings())  # no replica: every read on the primary
        self.settings = settings
        self.counters = counters
        self.transactions = Transactions.from_settings(settings, on_retry)
        self.reads = Reads(self.transactions, self.router, pool, read_pool)
        self.batchers = (
            {t: ReadBatcher(functools.partial(self._read_batch, t), settings.read_lanes) for t in Target}
            if settings.read_lanes > 0 else {}
        )
        if self.router.monitor is not None and self.batchers:
            # A failed replica hands the reads still waiting for it to the primary at once.
            self.router.monitor.on_unusable.append(self._divert_replica_reads)
        self._semantic: SemanticStatements | None = None
        self._semantic_missing_at: float | None = None  # monotonic time it was last found missing

    async def run_as(
        self, user_id: uuid.UUID, statements: list[tuple[str, object]], *, retry: bool = True,
        then: str | None = None, read_only: bool = False, budget: Budget | None = None,
    ) -> list[list[tuple]]:
        """``statements`` in one transaction on the primary, acting as ``user_id`` (row-level
        security admits their rows only), within ``budget`` (the request's by default)."""
        return await self.transactions.run(
            self.pool, statements, context=_acting_as(user_id), then=then, read_only=read_only, retry=retry,
            budget=budget,
        )

    # -- reads ---------------------------------------------------------------------------

    async def get(
        self, user_id: uuid.UUID, content_type: str, key: str, *, after_lsn: int | None = None
    ) -> CacheEntry | None:
        """The live entry; ``after_lsn`` (a consistency token) keeps it off a replica not yet there."""
        target = self.router.choose((user_id,), after_lsn)
        if self.batchers:
            (row,) = await within_budget(self.batchers[target].fetch([(user_id, content_type, key)]))
        else:
            (rows,) = await self.reads.run(target, [(GET, (user_id, content_type, key))], context=_acting_as(user_id))
            row = rows[0] if rows else None
        if row is None:
            self.counters.miss(user_id, content_type)
            return None
        return self.count_hit(user_id, row)

    def _divert_replica_reads(self) -> None:
        moved = self.batchers[Target.REPLICA].divert_to(self.batchers[Target.PRIMARY])
        self.router.routes[(Target.PRIMARY.value, "replica_failed_while_waiting")] += moved

    async def _read_batch(self, target: Target, triples: list[Triple]) -> list[tuple | None]:
        """One transaction for the triples of several requests (see batcher.py).

        The batch has a budget of its own (its task outlives the request that started it);
        each request waits for it only as long as its own budget allows."""
        users = [t[0] for t in triples]
        statement = (BATCH_GET, (users, [t[1] for t in triples], [t[2] for t in triples]))
        budget = Budget(self.settings.request_timeout_s)
        (rows,) = await self.reads.run(target, [statement], context=_reading_for(users), budget=budget)
        found = {row[0]: row[1:] for row in rows}
        return [found.get(ordinal) for ordinal in range(1, len(triples) + 1)]

    async def lookup(
        self, user_id: uuid.UUID, items: list[LookupItem], *, after_lsn: int | None = None
    ) -> list[CacheEntry | None]:
        target = self.router.choose((user_id,), after_lsn)
        if self.batchers:
            rows = await within_budget(self.batchers[target].fetch([(user_id, i.content_type, i.key) for i in items]))
        else:
            params = ([i.content_type for i in items], [i.key for i in items], user_id)
            (found,) = await self.reads.run(target, [(LOOKUP, params)], context=_acting_as(user_id))
            by_ordinal = {row[0]: row[1:] for row in found}
            rows = [by_ordinal.get(n) for n in range(1, len(items) + 1)]
        results: list[CacheEntry | None] = []
        for item, row in zip(items, rows):
            if row is None:
                self.counters.miss(user_id, item.content_type)
                results.append(None)
            else:
                results.append(self.count_hit(user_id, row))
        return results

    def count_hit(self, user_id: uuid.UUID, row: Sequence, *, semantic: bool = False) -> CacheEntry:
        entry_key, entry = _entry(row)
        before = self.counters.hit(
            user_id, entry.content_type, entry_key, entry.token_count, entry.cost_usd, semantic=semantic
        )
        if before is not None:  # hits counted here but not yet flushed to the row
            entry.hit_count += before.hits
            if entry.last_accessed_at is None or before.last_accessed_at > entry.last_accessed_at:
                entry.last_accessed_at = before.last_accessed_at
        return entry

    async def stats(self, user_id: uuid.UUID) -> StatsResponse:
        (rows,) = await self.run_as(user_id, [(STATS, (user_id,))], read_only=True)
        by_type = [
            ContentTypeStats(
                content_type=ct, hits=h, misses=m, semantic_hits=sh, hit_rate=_rate(h, m), tokens_saved=t,
                cost_saved_usd=round(c, 6),
            )
            for ct, h, m, sh, t, c in rows
        ]
        hits = sum(s.hits for s in by_type)
        misses = sum(s.misses for s in by_type)
        return StatsResponse(
            hits=hits,
            misses=misses,
            semantic_hits=sum(s.semantic_hits for s in by_type),
            hit_rate=_rate(hits, misses),
            tokens_saved=sum(s.tokens_saved for s in by_type),
            cost_saved_usd=round(sum(s.cost_saved_usd for s in by_type), 6),
            by_content_type=by_type,
        )

    # -- the semantic cache --------------------------------------------------------------

    async def semantic_statements(self, user_id: uuid.UUID) -> SemanticStatements:
        """The statements of the semantic cache; raises SemanticUnavailable without pgvector.

        Found once; while missing, looked for again at most every RECHECK_MISSING_S (once a
        DBA has added pgvector and the column, docs/semantic.md, no restart is needed)."""
        if self._semantic is not None:
            return self._semantic
        missing_at = self._semantic_missing_at
        if missing_at is None or time.monotonic() - missing_at >= RECHECK_MISSING_S:
            (rows,) = await self.run_as(user_id, [(EMBEDDING_TYPE_SCHEMA, None)], read_only=True)
            if rows:
                self._semantic = SemanticStatements.in_schema(rows[0][0])
                return self._semantic
            self._semantic_missing_at = time.monotonic()
        raise SemanticUnavailable("the database has no pgvector: the semantic cache is unavailable")

    async def similar(
        self, user_id: uuid.UUID, content_type: str, query: Sequence[float], *, max_distance: float, limit: int,
        candidates: int, after_lsn: int | None = None,
    ) -> list[SimilarResult]:
        """The user's live entries of ``content_type`` within ``max_distance`` (cosine) of
        ``query``, nearest first, at most ``limit``: among the ``candidates`` nearest by their
        sign bits (at least ``limit``), or among all of them when ``candidates`` is 0 (the
        exact scan; statements.py, docs/semantic.md).

        A search that finds one counts one semantic hit, on the nearest entry (the one a
        client reuses); one that finds none counts nothing."""
        statements = await self.semantic_statements(user_id)
        params = {
            "user": user_id, "ct": content_type, "query": vector_literal(query), "dim": len(query),
            "max_distance": max_distance, "limit": limit,
        }
        if candidates:
            statement = statements.similar
            params |= {"bits": sign_bits(query), "candidates": max(candidates, limit)}
        else:
            statement = statements.similar_exact
        target = self.router.choose((user_id,), after_lsn)
        (rows,) = await self.reads.run(target, [(statement, params)], context=_acting_as(user_id))
        results = []
        for n, row in enumerate(rows):
            entry = self.count_hit(user_id, row, semantic=True) if n == 0 else self._pending_hits(_entry(row))
            results.append(SimilarResult(distance=min(max(0.0, float(row[12])), 2.0), entry=entry))
        return results

    def _pending_hits(self, keyed: tuple[tuple[int, dt.datetime], CacheEntry]) -> CacheEntry:
        """An entry as it is with the hits counted here but not yet flushed (none counted now)."""
        entry_key, entry = keyed
        pending = self.counters.entries.get(entry_key)
        if pending is not None:
            entry.hit_count += pending.hits
            if entry.last_accessed_at is None or pending.last_accessed_at > entry.last_accessed_at:
                entry.last_accessed_at = pending.last_accessed_at
        return entry

    # -- writes --------------------------------------------------------------------------

    async def put(
        self, actor: Actor, content_type: str, key: str, body: PutEntry, ttl_seconds: int,
        embedding: Sequence[float] | None = None,
    ) -> tuple[CacheEntry, bool, str]:
        """Store an entry, replacing any older one; returns (entry, replaced a live entry, token).

        ``embedding`` (made a unit vector by the database) is stored with it for similarity searches (raises
        SemanticUnavailable without pgvector: nothing is stored then). Idempotent by key (the
        same PUT twice leaves the same single live entry), which is what makes retrying it
        safe. A month with no partition yet is created through ensure_monthly_partitions()
        and the write retried once.
        """
        statement = PUT if embedding is None else (await self.semantic_statements(actor.user_id)).put
        content, metadata = bytes(body.content).decode(), bytes(body.metadata).decode()
        params = {
            "user": actor.user_id,
            "ct": content_type,
            "key": key,
            **_json_columns(content, metadata),
            "tokens": body.token_count,
            "cost": body.cost_usd,
            "model": body.model,
            "ttl": ttl_seconds,
            "actor": actor.label,
            "request_id": actor.request_id,
            "embedding": None if embedding is None else vector_literal(embedding),
            "embedding_bits": None if embedding is None else sign_bits(embedding),
        }
        # PUT by key is idempotent (the same PUT again leaves the same single live entry), so
        # it may be retried after a dropped connection; DELETE and erase are not retried, as
        # a retry after a lost COMMIT would answer 404 / 0 for work that was done.
        statements = [(LOCK_KEY, (str(actor.user_id), content_type, key)), (statement, params)]
        try:
            results = await self._put_healing(actor.user_id, statements)
        except JSONB_REFUSALS:  # what rawjson.py leaves to PostgreSQL: numbers beyond numeric
            if params["content_raw"] is not None and params["metadata_raw"] is not None:
                raise
            params |= _json_columns(content, metadata, as_text=True)
            results = await self._put_healing(actor.user_id, statements)
        row = results[1][0]
        _, entry = _entry(row)
        return entry, bool(row[12]), _token(results)

    async def _put_healing(self, user_id: uuid.UUID, statements: list[tuple[str, object]]) -> list[list[tuple]]:
        try:
            return await self._write(user_id, statements)
        except errors.CheckViolation as exc:
            if "no partition of relation" not in str(exc):
                raise
            await self.ensure_partitions(user_id)
            return await self._write(user_id, statements)

    async def ensure_partitions(self, user_id: uuid.UUID) -> None:
        await self.run_as(user_id, [("SELECT ensure_monthly_partitions(now())", None)])

    async def delete(self, actor: Actor, content_type: str, key: str) -> tuple[bool, str]:
        """Delete the entry; returns (a live entry was deleted, token)."""
        params = {"user": actor.user_id, "ct": content_type, "key": key, "actor": actor.label, "request_id": actor.request_id}
        results = await self._write(
            actor.user_id, [(LOCK_KEY, (str(actor.user_id), content_type, key)), (DELETE, params)], retry=False
        )
        return bool(results[1][0][0]), _token(results)

    async def erase(self, actor: Actor) -> tuple[int, str]:
        """Erase the user's entries and statistics, and the cache keys in their audit rows;
        returns (entries deleted, token)."""
        params = {"user": actor.user_id, "actor": actor.label, "request_id": actor.request_id}
        results = await self._write(actor.user_id, [(BEGIN_ERASURE, None), (ERASE, params)], retry=False)
        self.counters.forget(actor.user_id)  # nothing of theirs may come back with a flush
        return results[1][0][0], _token(results)

    async def _write(self, user_id: uuid.UUID, statements: list[tuple[str, object]], *, retry: bool = True) -> list[list[tuple]]:
        """A write on the primary, followed by its WAL position; the user's reads through this
        process then go to the primary for ``read_your_writes_s`` (even if the write failed:
        it may have committed before its answer was lost)."""
        try:
            return await self.run_as(user_id, statements, retry=retry, then=WAL_POSITION)
        finally:
            self.router.wrote(user_id)


def _json_columns(content: str, metadata: str, *, as_text: bool = False) -> dict[str, str | None]:
    """jsonb where jsonb takes the JSON; else a placeholder there and the text verbatim in ``*_raw``."""
    columns: dict[str, str | None] = {}
    for name, text, placeholder in (("content", content, "null"), ("metadata", metadata, "{}")):
        raw = as_text or rawjson.jsonb_refuses(text)
        columns[name] = placeholder if raw else text
        columns[f"{name}_raw"] = text if raw else None
    return columns


def _token(results: list[list[tuple]]) -> str:
    """The consistency token of a write: the WAL position that followed its COMMIT."""
    return format_lsn(int(results[-1][0][0]))


def _rate(hits: int, misses: int) -> float | None:
    total = hits + misses
    return round(hits / total, 4) if total else None
