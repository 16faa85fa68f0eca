"""Generate-once leases (cachesvc/cache/leases.py): POST/DELETE /v1/leases/{contentType}/{key}.

Many callers missing one key at once: one gets the lease and generates, the others wait and
get its entry, across service processes; a holder that dies is replaced after the lease's
time; a user's leases are theirs alone.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from tests.harness import acting_as, as_service, as_user, cli, connect, http_client, metric, running_service

LEASE_PATH = "/v1/leases/chapter/{key}"


def lease(http, headers, key: str, **body):
    return http.post(LEASE_PATH.format(key=key), json=body or None, headers=headers)


def put(http, headers, key: str, content) -> None:
    res = http.put(f"/v1/cache/chapter/{key}", json={"content": content, "tokenCount": 100}, headers=headers)
    assert res.status_code in (200, 201), res.text


@pytest.fixture(scope="module")
def two_services(stack, tmp_path_factory):
    """Two service processes on one database: leases must hold across them."""
    logs = tmp_path_factory.mktemp("leases")
    with running_service(stack, logs / "a.log") as a, running_service(stack, logs / "b.log") as b:
        yield a, b


def test_twenty_callers_over_two_processes_one_generates_all_get_its_entry(two_services, tokens):
    a, b = two_services
    user, key = uuid.uuid4(), f"burst-{uuid.uuid4()}"
    h = as_user(tokens, user)
    generated: list[str] = []
    start = threading.Barrier(20)

    def caller(i: int) -> tuple[str, object]:
        with http_client(a if i % 2 else b, timeout=30) as http:
            start.wait()
            res = lease(http, h, key, leaseSeconds=30, waitMs=15000)
            body = res.json()
            if res.status_code == 201:
                assert body["status"] == "granted" and uuid.UUID(body["leaseId"])
                time.sleep(0.5)  # the expensive generation
                generated.append(f"made by caller {i}")
                put(http, h, key, generated[-1])
                return "generated", generated[-1]
            assert res.status_code == 200, res.text
            assert body["status"] == "hit"
            return "waited", body["entry"]["content"]

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(caller, range(20)))
    assert len(generated) == 1, generated
    assert [kind for kind, _ in results].count("generated") == 1
    assert {content for _, content in results} == {generated[0]}  # all 20 have the one generation
    totals = {o: metric(a, "cachesvc_leases_total", {"outcome": o})
                 + metric(b, "cachesvc_leases_total", {"outcome": o})
              for o in ("granted", "served", "hit")}
    assert totals["granted"] == 1
    assert totals["served"] + totals["hit"] == 19 and totals["served"] >= 1


def test_a_holder_that_never_puts_is_replaced_after_its_lease(service, tokens):
    user, key = uuid.uuid4(), f"dead-holder-{uuid.uuid4()}"
    h = as_user(tokens, user)
    with http_client(service, timeout=30) as http:
        first = lease(http, h, key, leaseSeconds=1)
        granted = time.monotonic()
        assert first.status_code == 201, first.text
        taken_over = metric(service, "cachesvc_leases_total", {"outcome": "taken_over"})
        waiting = lease(http, h, key, waitMs=0)
        assert waiting.status_code == 202 and waiting.json()["status"] == "wait"
        assert int(waiting.headers["retry-after"]) >= 1
        started = time.monotonic()
        second = lease(http, h, key, leaseSeconds=5, waitMs=5000)
        waited = time.monotonic() - started
        assert second.status_code == 201, second.text
        assert second.json()["leaseId"] != first.json()["leaseId"]
        # after the first lease's second (however long the steps above took), and not at the end
        assert time.monotonic() - granted > 0.9 and waited < 3.0, (time.monotonic() - granted, waited)
        assert metric(service, "cachesvc_leases_total", {"outcome": "taken_over"}) == taken_over + 1


def test_a_released_lease_lets_a_waiter_take_over_at_once(service, tokens):
    user, key = uuid.uuid4(), f"released-{uuid.uuid4()}"
    h = as_user(tokens, user)
    with http_client(service, timeout=30) as http:
        held = lease(http, h, key, leaseSeconds=60)
        assert held.status_code == 201
        lease_id = held.json()["leaseId"]

        def release_soon():
            time.sleep(0.5)
            res = http.delete(LEASE_PATH.format(key=key), headers=h | {"X-Cache-Lease": lease_id})
            assert res.status_code == 204, res.text

        releaser = threading.Thread(target=release_soon)
        releaser.start()
        started = time.monotonic()
        taken = lease(http, h, key, waitMs=10000)
        releaser.join()
        assert taken.status_code == 201, taken.text
        assert time.monotonic() - started < 2.0  # woken by the release, not by the 60 s lease
        again = http.delete(LEASE_PATH.format(key=key), headers=h | {"X-Cache-Lease": lease_id})
        assert again.status_code == 404 and again.json()["error"]["code"] == "lease_not_found"


def test_a_hit_is_answered_with_the_entry_and_a_put_releases_the_lease(service, tokens):
    user, key = uuid.uuid4(), f"hit-{uuid.uuid4()}"
    h = as_user(tokens, user)
    with http_client(service) as http:
        assert lease(http, h, key).status_code == 201
        put(http, h, key, {"text": "chapter one"})
        hit = lease(http, h, key)
        assert hit.status_code == 200 and hit.json()["status"] == "hit"
        assert hit.json()["entry"]["content"] == {"text": "chapter one"}
        assert http.delete(f"/v1/cache/chapter/{key}", headers=h).status_code == 204
        assert lease(http, h, key).status_code == 201  # the PUT released the first lease


def test_two_users_with_one_key_never_share_a_lease(service, tokens, stack):
    a, b, key = uuid.uuid4(), uuid.uuid4(), f"shared-{uuid.uuid4()}"
    with http_client(service) as http:
        held_by_a = lease(http, as_user(tokens, a), key, leaseSeconds=60)
        assert held_by_a.status_code == 201
        assert lease(http, as_user(tokens, b), key).status_code == 201  # B's own lease, not a wait on A's
        # B cannot release A's lease, even with its id, nor can a service token acting for B.
        for headers in (as_user(tokens, b), as_service(tokens, b)):
            res = http.delete(LEASE_PATH.format(key=key), headers=headers | {"X-Cache-Lease": held_by_a.json()["leaseId"]})
            assert res.status_code == 404
        assert lease(http, as_user(tokens, a), key, waitMs=0).status_code == 202  # A's lease still holds
        # A's entry, once put, is no hit for B.
        put(http, as_user(tokens, a), key, "a's")
        assert lease(http, as_user(tokens, b), key, waitMs=0).status_code == 202  # B waits on B's own lease
    # Behind the service, row-level security: acting as B, A's lease row is invisible and untouchable.
    with connect(stack, "cachesvc_app") as conn:
        with acting_as(conn, b):
            rows = conn.execute("SELECT user_id FROM cache_leases WHERE cache_key = %s", (key,)).fetchall()
            assert rows == [(b,)]
            assert conn.execute("UPDATE cache_leases SET expires_at = now() WHERE user_id = %s", (a,)).rowcount == 0
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(
                    "INSERT INTO cache_leases (user_id, content_type, cache_key, lease_id, expires_at)"
                    " VALUES (%s, 'chapter', 'forged', gen_random_uuid(), now() + interval '1 hour')", (a,)
                )


def test_forged_expired_and_missing_tokens_get_no_lease(service, tokens):
    user, key = uuid.uuid4(), f"auth-{uuid.uuid4()}"
    with http_client(service) as http:
        assert http.post(LEASE_PATH.format(key=key)).status_code == 401
        expired = {"Authorization": f"Bearer {tokens(user, ttl_seconds=-30)}"}
        assert http.post(LEASE_PATH.format(key=key), headers=expired).status_code == 401
        good = tokens(user)
        head, payload, _ = good.split(".")
        assert http.post(LEASE_PATH.format(key=key), headers={"Authorization": f"Bearer {head}.{payload}.AAAA"}).status_code == 401
        assert http.post(LEASE_PATH.format(key=key), headers=as_service(tokens)).status_code == 400  # no X-Cache-User
        assert http.delete(LEASE_PATH.format(key=key), headers=expired | {"X-Cache-Lease": str(uuid.uuid4())}).status_code == 401


@pytest.mark.parametrize("body, field", [
    ({"leaseSeconds": 0}, "leaseSeconds"), ({"leaseSeconds": 301}, "leaseSeconds"), ({"leaseSeconds": 1.5}, "leaseSeconds"),
    ({"waitMs": -1}, "waitMs"), ({"waitMs": 20001}, "waitMs"), ({"lease": 1}, None),
])
def test_bad_lease_requests_are_400(service, tokens, body, field):
    with http_client(service) as http:
        res = http.post(LEASE_PATH.format(key="k"), json=body, headers=as_user(tokens, uuid.uuid4()))
    assert res.status_code == 400, res.text
    if field:
        assert res.json()["error"]["field"] == field


@pytest.mark.parametrize("value", [None, "", "not-a-uuid"])
def test_a_release_without_a_lease_id_is_400(service, tokens, value):
    headers = as_user(tokens, uuid.uuid4()) | ({} if value is None else {"X-Cache-Lease": value})
    with http_client(service) as http:
        res = http.delete(LEASE_PATH.format(key="k"), headers=headers)
    assert res.status_code == 400 and res.json()["error"]["field"] == "X-Cache-Lease"


def test_erasure_removes_the_users_leases(service, tokens, admin):
    user, key = uuid.uuid4(), f"erase-{uuid.uuid4()}"
    h = as_user(tokens, user)
    with http_client(service) as http:
        assert lease(http, h, key, leaseSeconds=300).status_code == 201
        assert http.delete("/v1/cache", headers=h).status_code == 200
        assert admin.execute("SELECT count(*) FROM cache_leases WHERE user_id = %s", (user,)).fetchone() == (0,)
        assert lease(http, h, key).status_code == 201


def test_cleanup_removes_expired_leases_only(maint_env, admin):
    user = uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    for key, expires in (("gone", now - dt.timedelta(minutes=5)), ("held", now + dt.timedelta(minutes=5))):
        admin.execute(
            "INSERT INTO cache_leases (user_id, content_type, cache_key, lease_id, expires_at)"
            " VALUES (%s, 'chapter', %s, gen_random_uuid(), %s)", (user, key, expires),
        )
    result = cli(maint_env, "cleanup")
    assert result.returncode == 0, result.stderr
    left = admin.execute("SELECT cache_key FROM cache_leases WHERE user_id = %s", (user,)).fetchall()
    assert left == [("held",)]
