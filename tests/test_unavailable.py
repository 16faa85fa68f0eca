"""Database unreachable: 503 `unavailable` with Retry-After, quickly; recovery without a restart."""

from __future__ import annotations

import time
import uuid

import httpx2
import pytest

from cachesvc import pgbouncer
from cachesvc.localstack import LocalPgBouncer, free_port
from tests.harness import as_user, http_client, wait_until


@pytest.mark.timing
def test_pgbouncer_down_gives_503_then_recovers(stack, tokens, start_service):
    port = free_port()
    url = f"postgresql://cachesvc_app:{stack.passwords['cachesvc_app']}@127.0.0.1:{port}/cachesvc"
    directory = stack.home / f"bouncer-{port}"
    pgbouncer.write(pgbouncer.config_from_settings(stack.settings(database_url=url), directory))
    bouncer = LocalPgBouncer(directory, port)
    bouncer.start()
    h = as_user(tokens, uuid.uuid4())
    service = None
    try:
        service = start_service(database_url=url, pool_size=2, pool_timeout_s=1)
        with http_client(service) as http:
            assert http.put("/v1/cache/chapter/k", json={"content": 1}, headers=h).status_code == 201
            bouncer.stop()
            for _ in range(3):
                started = time.monotonic()
                res = http.get("/v1/cache/chapter/k", headers=h)
                elapsed = time.monotonic() - started
                assert res.status_code == 503, res.text
                assert res.json()["error"]["code"] == "unavailable"
                assert int(res.headers["retry-after"]) > 0
                assert elapsed < 5, f"took {elapsed:.1f}s to fail"
            assert http.get("/readyz").status_code == 503
            bouncer.start()

            def recovered(res: httpx2.Response) -> bool:
                if res.status_code == 200:
                    return True
                assert res.status_code == 503
                return False

            res = wait_until(lambda: http.get("/v1/cache/chapter/k", headers=h), 30, until=recovered,
                             error="service did not recover", interval=0.2)
            assert res.json()["content"] == 1
    finally:
        if service:
            service.stop()  # while its PgBouncer still runs (the fixture would stop it later)
        bouncer.stop()
