"""The fault promises of docs/operations.md, each proven by a test that tells its cause apart.

A hung server (SIGSTOP, not refused) answers 503 within ``CACHESVC_REQUEST_TIMEOUT_S`` and is
counted as ``DatabaseTimeout``; a backend terminated mid-request is retried once for GET and
PUT, never for DELETE and erase; SIGTERM finishes a request held in flight and flushes the
counters; an erase leaves no statistic behind, pending ones included; a GET writes nothing
until the flush; the verified-token cache honours ``exp``; every authenticated route refuses
missing, forged, expired and unsigned tokens.

Most tests run on a stack of their own (they freeze its servers and raise its login's
``lock_timeout`` above every request budget, so that only the budget can answer), each
with a service process of its own (the counters they read are per process).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import httpx2
import jwt
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cachesvc import auth
from cachesvc.localstack import SUPERUSER, LocalStack
from tests.harness import LiveService, http_client, throwaway_stack, token_maker, wait_until

BUDGET_S = 2.0  # CACHESVC_REQUEST_TIMEOUT_S of the hang test
EPSILON_S = 0.05
SLACK_S = 0.5
LOCK_WAIT = """
SELECT pid FROM pg_stat_activity
 WHERE usename = 'cachesvc_app' AND wait_event_type = 'Lock' AND wait_event = %s
"""


@pytest.fixture(scope="module")
def own_stack() -> Iterator[LocalStack]:
    """A stack these tests may freeze; its login waits on locks longer than any request budget."""
    with throwaway_stack("cachesvc-promises-") as s:
        with psycopg.connect(s.url(SUPERUSER), autocommit=True) as conn:
            conn.execute("ALTER ROLE cachesvc_app SET lock_timeout = '30s'")
        yield s


SERVICE = {"rate_limit_per_s": 0, "flush_interval_s": 600}  # each test's own service, with these unless it says otherwise


def as_user(stack: LocalStack, user: uuid.UUID, **kw) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_maker(stack)(user, **kw)}"}


def sample(service: LiveService, name: str, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels`` (0 for a labelled child not created yet);
    the metric itself must be exposed, so a misspelt name fails instead of reading 0."""
    families = list(text_string_to_metric_families(httpx2.get(service.url + "/metrics").text))
    assert any(f.name in (name, name.removesuffix("_total")) for f in families), f"{name} is not exposed"
    found = [s.value for f in families for s in f.samples if s.name == name and s.labels == labels]
    assert len(found) <= 1, (name, labels, found)
    return found[0] if found else 0.0


def flushes(service: LiveService) -> float:
    return sample(service, "cachesvc_counter_flushes_total", outcome="ok")


def next_flush(service: LiveService, after: float, timeout: float = 10) -> float:
    """Wait for the flusher to finish a round after the one counted ``after``; its count."""
    return wait_until(lambda: (n := flushes(service)) > after and n, timeout, "a counter flush", interval=0.02)


def put(http: httpx2.Client, headers: dict, key: str, content: object = "x", tokens: int = 7) -> None:
    res = http.put(f"/v1/cache/chapter/{key}", json={"content": content, "tokenCount": tokens}, headers=headers)
    assert res.status_code in (200, 201), res.text


def assert_unavailable(res: httpx2.Response) -> None:
    assert res.status_code == 503, res.text
    assert res.json()["error"]["code"] == "unavailable"
    assert int(res.headers["retry-after"]) > 0


# -- 1. a hung server: 503 within the request budget, counted as a timeout --------------------


def postgres_pids(stack: LocalStack) -> list[int]:
    """The postmaster and every backend: frozen together, no new connection gets through either."""
    postmaster = stack.postgres.proc.pid
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                pids.append(int(stat.parent.name))
    return pids


@contextlib.contextmanager
def frozen(pids: list[int]) -> Iterator[None]:
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


@pytest.mark.timing
@pytest.mark.parametrize("server", ["pgbouncer", "postgres"])
def test_hung_server_answers_503_within_the_request_budget(own_stack, start_service, server):
    # Every other bound is far above the budget: the pool wait, the statement timeout, the
    # login's lock_timeout (30 s), PgBouncer's query_wait_timeout (10 s), the connect timeout.
    settings = {"request_timeout_s": BUDGET_S, "pool_size": 4, "pool_timeout_s": 30, "statement_timeout_ms": 30000,
                "connect_timeout_s": 30}
    user = uuid.uuid4()
    h = as_user(own_stack, user)
    calls = [
        ("GET", "/v1/cache/chapter/k", None),
        ("PUT", "/v1/cache/chapter/k2", {"content": 1}),
        ("POST", "/v1/cache/lookup", {"items": [{"contentType": "chapter", "key": "k"}]}),
        ("GET", "/v1/cache/stats", None),
        ("DELETE", "/v1/cache/chapter/k4", None),
    ]
    service = start_service(own_stack, **(SERVICE | settings))
    with http_client(service, timeout=BUDGET_S + 5) as http:
        put(http, h, "k")
        timeouts = sample(service, "cachesvc_db_errors_total", kind="DatabaseTimeout")
        others = {k: sample(service, "cachesvc_db_errors_total", kind=k) for k in ("OperationalError", "PoolTimeout")}
        pids = [own_stack.bouncer.proc.pid] if server == "pgbouncer" else postgres_pids(own_stack)

        def timed(call: tuple[str, str, dict | None]) -> tuple[httpx2.Response, float]:
            started = time.monotonic()
            try:
                res = http.request(call[0], call[1], json=call[2], headers=h)
            except httpx2.TimeoutException:
                pytest.fail(f"{call[0]} {call[1]}: no answer within {BUDGET_S + 5}s (budget {BUDGET_S}s)")
            return res, time.monotonic() - started

        with frozen(pids), ThreadPoolExecutor(len(calls)) as pool:
            answers = list(pool.map(timed, calls))
        for (method, path, _), (res, elapsed) in zip(calls, answers):
            assert_unavailable(res)
            assert BUDGET_S - EPSILON_S <= elapsed <= BUDGET_S + SLACK_S, f"{method} {path}: {elapsed:.2f}s"
        assert sample(service, "cachesvc_db_errors_total", kind="DatabaseTimeout") == timeouts + len(calls)
        assert {k: sample(service, "cachesvc_db_errors_total", kind=k) for k in others} == others

        # Thawed, it serves again by itself.
        res = wait_until(lambda: http.get("/v1/cache/chapter/k", headers=h), 15, until=lambda res: res.status_code != 503,
                         error="no recovery after SIGCONT", interval=0)
        assert res.status_code == 200 and res.json()["content"] == "x"
        put(http, h, "k3")


def test_a_write_that_reaches_the_server_after_its_503_does_nothing(own_stack, start_service):
    """A write held in a frozen PgBouncer past the budget is answered 503; when PgBouncer
    thaws, its transaction reaches the server late and must commit nothing (the client was
    told it failed, and may have written something newer since).

    Two things end such a transaction at the server, and which comes first is a race: the
    deadline check (``cachesvc_before_deadline``) or the cancel request psycopg sends for the
    abandoned query, held in the same frozen PgBouncer. Either is logged; the test waits for
    one per late write, then checks nothing changed. The deadline check alone, without the
    race, is the next test."""
    settings = {"request_timeout_s": BUDGET_S, "pool_size": 4, "pool_timeout_s": 30, "statement_timeout_ms": 30000}
    user = uuid.uuid4()
    h = as_user(own_stack, user)
    log = own_stack.postgres.logfile
    service = start_service(own_stack, **(SERVICE | settings))
    with http_client(service, timeout=BUDGET_S + 5) as http:
        put(http, h, "kept", "v1")
        put(http, h, "not-deleted", "here")
        refused_before = ended_at_server(log.read_text())
        with frozen([own_stack.bouncer.proc.pid]), ThreadPoolExecutor(2) as pool:
            late = [
                pool.submit(http.put, "/v1/cache/chapter/kept", json={"content": "late"}, headers=h),
                pool.submit(http.delete, "/v1/cache/chapter/not-deleted", headers=h),
            ]
            for future in late:
                assert_unavailable(future.result())
        # Thawed: both late transactions reach the server, which refuses them (its log says why).
        wait_until(lambda: ended_at_server(log.read_text()) >= refused_before + 2, 15,
                   "the server ending both late writes", interval=0.02)
        assert http.get("/v1/cache/chapter/kept", headers=h).json()["content"] == "v1"
        assert http.get("/v1/cache/chapter/not-deleted", headers=h).status_code == 200


def ended_at_server(log: str) -> int:
    """Transactions the server ended late: refused by the deadline check, or cancelled."""
    return log.count("this transaction arrived") + log.count("canceling statement due to user request")


def test_a_transaction_past_its_deadline_commits_nothing(own_stack):
    """The deadline check itself, as the service sends it (the first statement of a write)."""
    user = uuid.uuid4()
    login = psycopg.connect(own_stack.url("cachesvc_app"), autocommit=True)
    with login, psycopg.connect(own_stack.url(SUPERUSER), autocommit=True) as admin:
        def write(deadline_offset_s: float) -> None:
            with login.transaction():
                login.execute("SELECT set_config('cachesvc.user_id', %s, true)", (str(user),))
                login.execute("SELECT cachesvc_before_deadline(clock_timestamp() + make_interval(secs => %s))",
                              (deadline_offset_s,))
                login.execute(
                    "INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, expires_at)"
                    " VALUES (%s, 'chapter', %s, '\"x\"', now() + interval '1 hour')",
                    (user, f"deadline{deadline_offset_s}"),
                )

        with pytest.raises(psycopg.errors.QueryCanceled, match="this transaction arrived"):
            write(-0.5)  # the request gave up half a second ago
        write(30)  # a request still waiting
        keys = admin.execute(
            "SELECT cache_key FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)
        ).fetchall()
    assert keys == [("deadline30",)]


# -- 2. a connection lost mid-request: GET and PUT retried once, DELETE and erase never -------


@contextlib.contextmanager
def held(stack: LocalStack, statement: str, params: tuple = ()) -> Iterator[psycopg.Connection]:
    """A lock taken by an admin transaction, released (rolled back) on leaving."""
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        conn.execute(statement, params)
        try:
            yield conn
        finally:
            conn.rollback()


def key_lock(user: uuid.UUID, content_type: str, key: str) -> tuple[str, tuple]:
    """The advisory lock a PUT or DELETE of the triple takes (cachesvc.cache.statements.LOCK_KEY)."""
    return "SELECT pg_advisory_xact_lock(hashtextextended(%s || '/' || %s || '/' || %s, 0))", (str(user), content_type, key)


TABLE_LOCK = ("LOCK TABLE infinite_pages_cache_partitioned IN ACCESS EXCLUSIVE MODE", ())


def waiting_backend(admin: psycopg.Connection, wait_event: str) -> int:
    """The one service backend waiting on a lock of that kind ('advisory', 'relation')."""
    def one() -> int | None:
        pids = [r[0] for r in admin.execute(LOCK_WAIT, (wait_event,))]
        assert len(pids) <= 1, f"more than one backend waits on a {wait_event} lock: {pids}"
        return pids[0] if pids else None

    return wait_until(one, 5, f"a service backend waiting on a {wait_event} lock", interval=0.02)


def terminated_mid_request(
    stack: LocalStack, send: Callable[[], httpx2.Response], lock: tuple[str, tuple], wait_event: str
) -> httpx2.Response:
    """``send`` is held on ``lock``; its backend is terminated while it waits, then the lock released."""
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as admin, ThreadPoolExecutor(1) as pool:
        with held(stack, *lock):
            answer: Future = pool.submit(send)
            pid = waiting_backend(admin, wait_event)
            assert admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
            wait_until(lambda: not admin.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone(), 5,
                       "the terminated backend gone", interval=0.02)
        return answer.result(30)


def test_lost_connection_retried_once_for_get_and_put_never_for_delete_and_erase(own_stack, start_service):
    user = uuid.uuid4()
    h = as_user(own_stack, user)
    service = start_service(own_stack, **SERVICE)
    with http_client(service) as http:
        def retries() -> float:
            return sample(service, "cachesvc_db_retries_total", operation="cache")

        def lost() -> float:  # pg_terminate_backend's error, as psycopg names it
            return sample(service, "cachesvc_db_errors_total", kind="AdminShutdown")

        put(http, h, "kept", content="before")

        before = retries()
        res = terminated_mid_request(own_stack, lambda: http.get("/v1/cache/chapter/kept", headers=h), TABLE_LOCK, "relation")
        assert res.status_code == 200 and res.json()["content"] == "before", res.text
        assert retries() == before + 1

        before = retries()
        res = terminated_mid_request(
            own_stack, lambda: http.put("/v1/cache/chapter/new", json={"content": "v1"}, headers=h),
            key_lock(user, "chapter", "new"), "advisory",
        )
        assert res.status_code == 201, res.text
        assert retries() == before + 1
        with psycopg.connect(own_stack.url(SUPERUSER)) as conn:
            assert conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned"
                                " WHERE user_id = %s AND cache_key = 'new'", (user,)).fetchone() == (1,)

        # DELETE: not retried. The client sees 503 `unavailable` (Retry-After); the transaction
        # did not commit, so the entry is still there and sending the DELETE again deletes it.
        before, errors_before = retries(), lost()
        res = terminated_mid_request(
            own_stack, lambda: http.delete("/v1/cache/chapter/kept", headers=h), key_lock(user, "chapter", "kept"), "advisory"
        )
        assert_unavailable(res)
        assert retries() == before and lost() == errors_before + 1
        assert sample(service, "cachesvc_db_errors_total", kind="DatabaseTimeout") == 0
        assert http.get("/v1/cache/chapter/kept", headers=h).status_code == 200

        # Erase: not retried either; the client sees 503 and nothing of the user is erased.
        before, errors_before = retries(), lost()
        res = terminated_mid_request(own_stack, lambda: http.delete("/v1/cache", headers=h), TABLE_LOCK, "relation")
        assert_unavailable(res)
        assert retries() == before and lost() == errors_before + 1
        assert http.get("/v1/cache/chapter/kept", headers=h).status_code == 200
        assert http.delete("/v1/cache/chapter/kept", headers=h).status_code == 204
        assert http.delete("/v1/cache", headers=h).json() == {"deleted": 1}


# -- 3. SIGTERM: the request in flight is answered, the counters flushed -----------------------


def listening(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


@pytest.mark.timing
def test_sigterm_answers_the_request_in_flight_and_flushes_counters(own_stack, start_service):
    grace = 5
    hold_s = 1.0
    user = uuid.uuid4()
    h = as_user(own_stack, user)
    # Counters are flushed only at shutdown here (the interval is far longer than the test).
    service = start_service(own_stack, flush_interval_s=600, shutdown_grace_s=grace, rate_limit_per_s=0)
    with http_client(service) as http:
        put(http, h, "hot", tokens=7)
        assert http.get("/v1/cache/chapter/hot", headers=h).status_code == 200  # one hit, counted in memory
    with psycopg.connect(own_stack.url(SUPERUSER), autocommit=True) as admin, ThreadPoolExecutor(1) as pool:
        with held(own_stack, *TABLE_LOCK):
            in_flight: Future = pool.submit(
                lambda: httpx2.get(service.url + "/v1/cache/chapter/hot", headers=h, timeout=30)
            )
            waiting_backend(admin, "relation")
            service.proc.send_signal(signal.SIGTERM)
            stopping = time.monotonic()
            wait_until(lambda: not listening(service.url), 5, "the listener closed after SIGTERM", interval=0.02)
            # Not a wait for a state: the request stays held well into the grace period, so
            # that only the grace (not a quick release) can explain its answer.
            time.sleep(max(0.0, stopping + hold_s - time.monotonic()))
            assert service.proc.poll() is None and not in_flight.done()  # still held, still waited for
        res = in_flight.result(30)
    assert res.status_code == 200 and res.json()["content"] == "x", res.text
    code = service.proc.wait(grace + 5)
    assert time.monotonic() - stopping <= grace, "did not exit within CACHESVC_SHUTDOWN_GRACE_S"
    # A graceful stop: uvicorn then re-raises the SIGTERM it handled (a clean stop to systemd).
    assert code == 0, code
    log = service.log_path.read_text()
    assert "final counter flush" in log and "Traceback" not in log
    with psycopg.connect(own_stack.url(SUPERUSER)) as conn:
        assert conn.execute("SELECT hit_count FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)).fetchone() == (2,)
        assert conn.execute("SELECT sum(hits), sum(tokens_saved) FROM cache_access_stats WHERE user_id = %s",
                            (user,)).fetchone() == (2, 14)


# -- 4 and 5. counters: a GET writes nothing until the flush; an erase leaves nothing behind --


def stat_rows(stack: LocalStack, user: uuid.UUID) -> int:
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        return conn.execute("SELECT count(*) FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone()[0]


def hit_count(stack: LocalStack, user: uuid.UUID, key: str) -> tuple[int, bool]:
    with psycopg.connect(stack.url(SUPERUSER)) as conn:
        return conn.execute(
            "SELECT hit_count, last_accessed_at IS NOT NULL FROM infinite_pages_cache_partitioned"
            " WHERE user_id = %s AND cache_key = %s", (user, key),
        ).fetchone()


FLUSH_S = 1.5  # long enough for a few requests between two flushes, short enough to wait for


def test_get_writes_nothing_until_the_flush(own_stack, start_service):
    user = uuid.uuid4()
    h = as_user(own_stack, user)
    service = start_service(own_stack, **(SERVICE | {"flush_interval_s": FLUSH_S}))
    with http_client(service) as http:
        put(http, h, "read-me")
        flushed = next_flush(service, flushes(service))  # just after a flush: a whole interval ahead
        for n in range(3):
            res = http.get("/v1/cache/chapter/read-me", headers=h)
            assert res.status_code == 200 and res.json()["hitCount"] == n  # what it was before this read
        assert http.get("/v1/cache/chapter/absent", headers=h).status_code == 404
        assert hit_count(own_stack, user, "read-me") == (0, False) and stat_rows(own_stack, user) == 0
        assert flushes(service) == flushed, f"a flush ran during the reads; raise FLUSH_S ({FLUSH_S}s)"
        next_flush(service, flushed)
        assert hit_count(own_stack, user, "read-me") == (3, True)
        stats = http.get("/v1/cache/stats", headers=h).json()
        assert (stats["hits"], stats["misses"], stats["tokensSaved"]) == (3, 1, 21)


def test_erase_drops_pending_counters_and_nothing_comes_back(own_stack, start_service):
    """tests/test_erasure.py proves the database side (flushes in flight, other processes'
    counts). Here, through the live service: counts still in this process's memory at the
    erase are dropped there, and later flushes bring nothing of the user back."""
    user = uuid.uuid4()
    h = as_user(own_stack, user)
    service = start_service(own_stack, **(SERVICE | {"flush_interval_s": FLUSH_S}))
    with http_client(service) as http:
        put(http, h, "k")
        assert http.get("/v1/cache/chapter/k", headers=h).status_code == 200
        flushed = next_flush(service, flushes(service))
        assert stat_rows(own_stack, user) == 1  # flushed statistics, for the erase to delete
        flushed = next_flush(service, flushed)  # just after a flush: a whole interval ahead
        assert http.get("/v1/cache/chapter/k", headers=h).status_code == 200
        assert http.get("/v1/cache/foundation/absent", headers=h).status_code == 404
        pending = sample(service, "cachesvc_counters_pending")
        assert pending == 3  # the entry's hit count, and the user's statistics of two content types
        assert http.delete("/v1/cache", headers=h).json() == {"deleted": 1}
        assert flushes(service) == flushed, f"a flush ran between the reads and the erase; raise FLUSH_S ({FLUSH_S}s)"
        assert stat_rows(own_stack, user) == 0
        # The user's statistics are gone from memory at once (only the deleted row's hit count,
        # which names no user and updates nothing, may wait for the flush).
        assert sample(service, "cachesvc_counters_pending") <= 1
        next_flush(service, next_flush(service, flushed))  # a whole flush begun after the erase
        assert stat_rows(own_stack, user) == 0
        assert sample(service, "cachesvc_counters_pending") == 0
        assert http.get("/v1/cache/stats", headers=h).json()["hits"] == 0


# -- 6 and 7. tokens ----------------------------------------------------------------------------


@pytest.mark.timing
def test_cached_token_is_refused_after_its_exp(service, tokens):
    token = tokens(uuid.uuid4(), ttl_seconds=2)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    h = {"Authorization": f"Bearer {token}"}
    with http_client(service, timeout=10) as http:
        assert http.get("/v1/cache/chapter/k", headers=h).status_code == 404  # verified, and now cached
        assert http.get("/v1/cache/chapter/k", headers=h).status_code == 404  # served from the cache
        res = wait_until(lambda: http.get("/v1/cache/chapter/k", headers=h), exp + 1 - time.time(),
                         until=lambda res: res.status_code != 404,
                         error="the cached token was still accepted a second past its exp")
    assert res.status_code == 401 and res.json()["error"]["code"] == "unauthorized", res.text
    assert "expired" in res.json()["error"]["message"]


PATH_VALUES = {"contentType": "chapter", "key": "some-key", "entityKey": "1"}


def authenticated_operations(document: dict) -> list[tuple[str, str]]:
    """(method, path) of every operation the OpenAPI document says needs a token."""
    default = document.get("security", [])
    return [
        (method.upper(), path.format(**PATH_VALUES))
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method in ("get", "put", "post", "delete", "patch") and op.get("security", default)
    ]


def bad_tokens(stack: LocalStack) -> dict[str, dict[str, str]]:
    secret = stack.settings().jwt_secret
    user = str(uuid.uuid4())
    now = int(time.time())
    claims = {"sub": user, "aud": "authenticated", "role": auth.SERVICE_ROLE, "iat": now, "exp": now + 600}
    unsigned = jwt.encode(claims, None, algorithm="none")
    return {
        "missing": {},
        "forged": {"Authorization": f"Bearer {auth.mint('another-secret-' + 'x' * 40, sub='svc', role=auth.SERVICE_ROLE)}"},
        "expired": {"Authorization": f"Bearer {jwt.encode(claims | {'exp': now - 60}, secret, algorithm='HS256')}"},
        "alg none": {"Authorization": f"Bearer {unsigned}"},
    }


def test_every_authenticated_route_refuses_bad_tokens(service, tokens, stack):
    with http_client(service, timeout=10) as http:
        operations = authenticated_operations(http.get("/openapi.json").json())
        # The document is the source; it must at least name the routes we know of.
        assert {("PUT", "/v1/cache/chapter/some-key"), ("DELETE", "/v1/cache"), ("POST", "/v1/features/lookup"),
                ("GET", "/v1/cache/stats")} <= set(operations), operations
        good = {"Authorization": f"Bearer {tokens(service=True)}"}
        user = {"X-Cache-User": str(uuid.uuid4())}
        body = {"content": 1, "items": [{"contentType": "chapter", "key": "k"}], "entityKeys": ["1"]}
        refused = []
        for name, headers in bad_tokens(stack).items():
            for method, path in operations:
                res = http.request(method, path, json=body if method in ("PUT", "POST") else None, headers=headers | user)
                if res.status_code != 401 or res.json()["error"]["code"] != "unauthorized":
                    refused.append((name, method, path, res.status_code))
        assert refused == [], "not 401 unauthorized"
        # Control: a good token on the same requests is not a 401, so the token made the difference.
        for method, path in operations:
            res = http.request(method, path, json=body if method in ("PUT", "POST") else None, headers=good | user)
            assert res.status_code != 401, (method, path, res.text)
