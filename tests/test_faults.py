"""Faults under load, on a stack of their own: PostgreSQL or PgBouncer restarted, server
connections terminated, SIGTERM, pool exhaustion. Every request either succeeds or gets a
503 within the bound; every acknowledged write is there afterwards."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import httpx2
import psycopg
import pytest

from cachesvc import auth
from cachesvc.localstack import SUPERUSER, LocalStack
from tests.harness import CheckedThread, LiveService, http_client, join_all, metric, throwaway_stack, wait_until

BOUND_S = 5.0  # request_timeout_s (2) + pool_timeout_s (1) + slack for a loaded 2-core machine


@pytest.fixture(scope="module")
def fault_stack():
    """A stack of its own: these tests stop and start its servers."""
    with throwaway_stack("cachesvc-faults-") as s:
        yield s


SERVICE = {"pool_size": 4, "pool_timeout_s": 1, "request_timeout_s": 2, "rate_limit_per_s": 0, "flush_interval_s": 0.5}


def token(stack: LocalStack, user: uuid.UUID) -> str:
    return auth.mint(stack.settings().jwt_secret, sub=str(user))


@dataclass
class Load:
    """Mixed GET/PUT traffic from several users; PUTs use fresh keys so each ack is checkable."""

    url: str
    stack: LocalStack
    users: list[uuid.UUID] = field(default_factory=lambda: [uuid.uuid4() for _ in range(6)])
    acked: list[tuple[uuid.UUID, str, int]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    answered: Counter[tuple[str, int]] = field(default_factory=Counter)  # (method, status) -> responses
    slow: list[tuple[str, float, int]] = field(default_factory=list)
    transport_errors: int = 0

    async def worker(self, client: httpx2.AsyncClient, user: uuid.UUID, until: float) -> None:
        h = {"Authorization": f"Bearer {token(self.stack, user)}"}
        n = 0
        while time.monotonic() < until:
            n += 1
            key = f"k-{n}"
            for method in ("PUT", "GET"):
                started = time.monotonic()
                try:
                    if method == "PUT":
                        res = await client.put(f"/v1/cache/chapter/{key}", json={"content": n}, headers=h)
                    else:
                        res = await client.get(f"/v1/cache/chapter/{key}", headers=h)
                except httpx2.TransportError:
                    self.transport_errors += 1
                    await asyncio.sleep(0.05)
                    continue
                elapsed = time.monotonic() - started
                self.statuses.append(res.status_code)
                self.answered[method, res.status_code] += 1
                if elapsed > BOUND_S:
                    self.slow.append((method, elapsed, res.status_code))
                if method == "PUT" and res.status_code in (200, 201):
                    self.acked.append((user, key, n))
                if res.status_code == 503:
                    assert res.headers.get("retry-after")
                    await asyncio.sleep(0.05)

    def run(self, seconds: float) -> None:
        async def main():
            async with httpx2.AsyncClient(base_url=self.url, timeout=30) as client:
                until = time.monotonic() + seconds
                await asyncio.gather(*(self.worker(client, u, until) for u in self.users))

        asyncio.run(main())

    def in_background(self, seconds: float) -> CheckedThread:
        """The load in a thread; ``join_all([thread])`` re-raises what failed in it (a 503
        without Retry-After, say) in the test."""
        thread = CheckedThread(self.run, seconds, name="load")
        thread.start()
        return thread

    def check(self, *, allow_transport_errors: bool = False) -> None:
        assert self.slow == [], f"requests over {BOUND_S}s: {self.slow[:5]}"
        assert set(self.statuses) <= {200, 201, 404, 503}, sorted(set(self.statuses))
        assert self.statuses.count(200) + self.statuses.count(201) > 0
        if not allow_transport_errors:
            assert self.transport_errors == 0
        with psycopg.connect(self.stack.url(SUPERUSER)) as conn:
            stored = {
                (u, k): c
                for u, k, c in conn.execute(
                    "SELECT user_id, cache_key, (content #>> '{}')::int FROM infinite_pages_cache_partitioned"
                    " WHERE user_id = ANY(%s)",
                    (self.users,),
                )
            }
        lost = [(u, k) for u, k, n in self.acked if stored.get((u, k)) != n]
        assert lost == [], f"{len(lost)} acknowledged writes missing, e.g. {lost[:3]}"


def wait_recovered(service: LiveService, stack: LocalStack, timeout: float = 30) -> None:
    user = uuid.uuid4()
    h = {"Authorization": f"Bearer {token(stack, user)}"}
    with http_client(service, timeout=10) as http:
        wait_until(lambda: http.put("/v1/cache/chapter/probe", json={"content": 1}, headers=h).status_code in (200, 201),
                   timeout, error="the service did not recover by itself", interval=0.2)
        assert http.get("/readyz").status_code == 200


@pytest.mark.timing
def test_postgres_stopped_during_load(fault_stack, start_service):
    service = start_service(fault_stack, **SERVICE)
    load = Load(service.url, fault_stack)
    thread = load.in_background(9)
    time.sleep(2)
    fault_stack.postgres.stop()
    time.sleep(3)
    fault_stack.postgres.start()
    join_all([thread])
    wait_recovered(service, fault_stack)
    load.check()
    assert 503 in load.statuses  # the outage was seen, and answered quickly


@pytest.mark.timing
def test_right_after_postgres_restarts_requests_wait_for_pgbouncer_instead_of_failing(fault_stack, start_service):
    """A request while PostgreSQL is down is a quick 503, and makes PgBouncer's login fail;
    PgBouncer then turns clients away until a login succeeds, even once the server is back.
    Requests sent the moment it is back wait for PgBouncer's next login and succeed, writes
    (a DELETE too) included, and are all there."""
    service = start_service(fault_stack, **SERVICE)
    user = uuid.uuid4()
    h = {"Authorization": f"Bearer {token(fault_stack, user)}"}
    with http_client(service, timeout=BOUND_S + 5) as http:
        assert http.put("/v1/cache/chapter/before", json={"content": 0}, headers=h).status_code == 201
        fault_stack.postgres.stop()
        try:
            started = time.monotonic()
            down = http.get("/v1/cache/chapter/before", headers=h)
            assert down.status_code == 503 and time.monotonic() - started < BOUND_S, down.text
        finally:
            fault_stack.postgres.start()
        answers = [http.put(f"/v1/cache/chapter/after-{i}", json={"content": i}, headers=h) for i in range(3)]
        answers += [http.get("/v1/cache/chapter/before", headers=h), http.delete("/v1/cache/chapter/after-0", headers=h)]
        assert [a.status_code for a in answers] == [201, 201, 201, 200, 204], [a.text for a in answers]
        assert [http.get(f"/v1/cache/chapter/after-{i}", headers=h).status_code for i in range(3)] == [404, 200, 200]


@pytest.mark.timing
def test_pgbouncer_restarted_during_load(fault_stack, start_service):
    service = start_service(fault_stack, **SERVICE)
    load = Load(service.url, fault_stack)
    thread = load.in_background(7)
    time.sleep(2)
    fault_stack.bouncer.stop()
    time.sleep(1.5)
    fault_stack.bouncer.start()
    join_all([thread])
    wait_recovered(service, fault_stack)
    load.check()


@pytest.mark.timing
def test_terminated_server_connections_are_replaced(fault_stack, start_service):
    service = start_service(fault_stack, **SERVICE)
    load = Load(service.url, fault_stack)
    thread = load.in_background(6)
    killed = 0
    with psycopg.connect(fault_stack.url(SUPERUSER), autocommit=True) as admin:
        for _ in range(4):
            time.sleep(1)
            killed += admin.execute(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE usename = 'cachesvc_app' AND pid <> pg_backend_pid()) t"
            ).fetchone()[0]
    join_all([thread])
    assert killed > 0
    # Every answer the load got, 503s included, was counted once in the request metric.
    route = "/v1/cache/{contentType}/{key}"
    counted = {(method, status): metric(service, "cachesvc_request_duration_seconds_count",
                                        {"route": route, "method": method, "status": str(status)})
               for method, status in load.answered}
    assert counted == load.answered
    wait_recovered(service, fault_stack)
    load.check()


@pytest.mark.timing
def test_sigterm_finishes_in_flight_flushes_counters_loses_nothing(fault_stack, start_service):
    # Counters are flushed only at shutdown here (interval far longer than the test).
    service = start_service(fault_stack, **(SERVICE | {"flush_interval_s": 600, "shutdown_grace_s": 10}))
    user = uuid.uuid4()
    h = {"Authorization": f"Bearer {token(fault_stack, user)}"}
    with http_client(service) as http:
        assert http.put("/v1/cache/chapter/hot", json={"content": "x", "tokenCount": 7}, headers=h).status_code == 201
        hits = sum(http.get("/v1/cache/chapter/hot", headers=h).status_code == 200 for _ in range(25))
    load = Load(service.url, fault_stack)
    thread = load.in_background(4)
    time.sleep(1.5)
    service.proc.send_signal(signal.SIGTERM)
    # A graceful stop; the server then re-raises SIGTERM, as a process killed by it would.
    assert service.proc.wait(30) == 0
    join_all([thread])
    load.check(allow_transport_errors=True)  # requests sent after the listener closed are refused
    log = service.log_path.read_text()
    assert "final counter flush" in log and "Traceback" not in log
    with psycopg.connect(fault_stack.url(SUPERUSER)) as conn:
        row = conn.execute(
            "SELECT hit_count FROM infinite_pages_cache_partitioned WHERE user_id = %s AND cache_key = 'hot'", (user,)
        ).fetchone()
        stats = conn.execute("SELECT sum(hits), sum(tokens_saved) FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone()
    assert row == (hits,) and hits == 25
    assert stats == (25, 175)


@pytest.mark.timing
def test_pool_exhaustion_waits_at_most_the_bound_then_503(fault_stack, start_service):
    service = start_service(fault_stack, **(SERVICE | {"pool_size": 2}))
    user = uuid.uuid4()
    h = {"Authorization": f"Bearer {token(fault_stack, user)}"}
    with http_client(service) as http:
        assert http.put("/v1/cache/chapter/k", json={"content": 1}, headers=h).status_code == 201
    with psycopg.connect(fault_stack.url(SUPERUSER)) as blocker:
        blocker.execute("LOCK TABLE infinite_pages_cache_partitioned IN ACCESS EXCLUSIVE MODE")

        async def burst():
            async with httpx2.AsyncClient(base_url=service.url, timeout=30) as client:
                async def one():
                    started = time.monotonic()
                    res = await client.get("/v1/cache/chapter/k", headers=h)
                    return res.status_code, time.monotonic() - started

                return await asyncio.gather(*(one() for _ in range(10)))

        results = asyncio.run(burst())
        blocker.rollback()
    assert {status for status, _ in results} == {503}, results
    assert max(elapsed for _, elapsed in results) < BOUND_S, results
    wait_recovered(service, fault_stack)
