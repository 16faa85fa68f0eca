"""Coalesced reads where they are the common case: one read lane, a small pool, many requests in flight.

Many users own entries under the same (content type, key) pairs, each with content that names its
owner, and each user lacks some pairs that others have. A batch then holds rows of several users
for the same pair, and misses beside hits: a row handed to the wrong request, or a miss filled
from a neighbour's row, shows as content naming someone else or as a hit that should be a 404.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import httpx2
import pytest

from tests.harness import metric, running_service

USERS = 24
CONTENT_TYPES = ("chapter", "story_foundation")
KEYS = tuple(f"shared-{i}" for i in range(6))
REQUESTS = 480
IN_FLIGHT = 96


def owns(user_index: int, content_type: str, key_index: int) -> bool:
    """Each user lacks a third of the pairs, a different third for neighbouring users."""
    return (user_index + key_index + CONTENT_TYPES.index(content_type)) % 3 != 0


def content_of(user: uuid.UUID, content_type: str, key: str) -> dict:
    return {"owner": str(user), "pair": f"{content_type}/{key}"}


@pytest.fixture(scope="module")
def coalescing_service(stack, tmp_path_factory):
    """One read lane and two connections: while one batch runs, every read queues for the next."""
    with running_service(stack, tmp_path_factory.mktemp("coalescing") / "service.log",
                         read_lanes="1", pool_size="2", rate_limit_per_s="0") as live:
        yield live


def test_coalesced_reads_answer_each_requester_with_its_own_rows(coalescing_service, tokens):
    service = coalescing_service
    users = [uuid.uuid4() for _ in range(USERS)]
    rng = random.Random(17)

    def user_headers(i: int) -> dict[str, str]:
        if i % 4 == 0:  # a service token acting for the user
            return {"Authorization": f"Bearer {tokens(service=True)}", "X-Cache-User": str(users[i])}
        return {"Authorization": f"Bearer {tokens(users[i])}"}

    def expected(i: int, content_type: str, k: int) -> dict | None:
        return content_of(users[i], content_type, KEYS[k]) if owns(i, content_type, k) else None

    async def seed(http: httpx2.AsyncClient) -> None:
        async def put(i: int, content_type: str, k: int) -> None:
            res = await http.put(f"/v1/cache/{content_type}/{KEYS[k]}", headers=user_headers(i),
                                 json={"content": content_of(users[i], content_type, KEYS[k])})
            assert res.status_code == 201, res.text

        await asyncio.gather(*(put(i, ct, k) for i in range(USERS) for ct in CONTENT_TYPES
                               for k in range(len(KEYS)) if owns(i, ct, k)))

    async def get(http: httpx2.AsyncClient, i: int) -> None:
        content_type, k = rng.choice(CONTENT_TYPES), rng.randrange(len(KEYS))
        res = await http.get(f"/v1/cache/{content_type}/{KEYS[k]}", headers=user_headers(i))
        want = expected(i, content_type, k)
        if want is None:  # others in the batch hold this pair: still a miss for this user
            assert res.status_code == 404 and res.json()["error"]["code"] == "cache_miss", (users[i], res.text)
        else:
            assert res.status_code == 200, res.text
            body = res.json()
            assert (body["content"], body["contentType"], body["key"]) == (want, content_type, KEYS[k]), users[i]

    async def lookup(http: httpx2.AsyncClient, i: int) -> None:
        items = [(rng.choice(CONTENT_TYPES), rng.randrange(len(KEYS))) for _ in range(rng.randint(1, 6))]
        res = await http.post("/v1/cache/lookup", headers=user_headers(i),
                              json={"items": [{"contentType": ct, "key": KEYS[k]} for ct, k in items]})
        assert res.status_code == 200, res.text
        results = res.json()["results"]
        assert [(r["contentType"], r["key"]) for r in results] == [(ct, KEYS[k]) for ct, k in items]
        for (content_type, k), result in zip(items, results):
            want = expected(i, content_type, k)
            assert result["hit"] is (want is not None), (users[i], content_type, KEYS[k], result)
            assert (result.get("entry") or {}).get("content") == want, users[i]

    async def run() -> None:
        limits = httpx2.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)
        async with httpx2.AsyncClient(base_url=service.url, timeout=30, limits=limits) as http:
            await seed(http)
            gate = asyncio.Semaphore(IN_FLIGHT)
            plan = [(rng.randrange(USERS), rng.random() < 0.5) for _ in range(REQUESTS)]

            async def one(i: int, as_get: bool) -> None:
                async with gate:
                    await (get(http, i) if as_get else lookup(http, i))

            await asyncio.gather(*(one(i, as_get) for i, as_get in plan))

    before = metric(service, "cachesvc_reads_coalesced_total")
    asyncio.run(run())
    coalesced = metric(service, "cachesvc_reads_coalesced_total") - before
    assert coalesced >= REQUESTS / 2, f"only {coalesced:.0f} of {REQUESTS} reads shared a transaction"
