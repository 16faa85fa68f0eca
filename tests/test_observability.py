"""Rate limiting, access logs and metrics of a live service."""

from __future__ import annotations

import hashlib
import json
import uuid
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.harness import as_user, http_client, metric, metrics_text


@pytest.mark.timing
def test_rate_limit_per_user_with_retry_after(tokens, start_service):
    service = start_service(rate_limit_per_s=0.5, rate_limit_burst=3)
    a, b = uuid.uuid4(), uuid.uuid4()
    with http_client(service, timeout=5) as http:
        ha = as_user(tokens, a)
        codes = [http.get("/v1/cache/chapter/k", headers=ha).status_code for _ in range(3)]
        assert codes == [404, 404, 404]
        limited = http.get("/v1/cache/chapter/k", headers=ha)
        assert limited.status_code == 429
        assert limited.json()["error"]["code"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        # Another user has a bucket of their own.
        assert http.get("/v1/cache/chapter/k", headers=as_user(tokens, b)).status_code == 404
        assert metric(service, "cachesvc_rate_limited_total") == 1


def test_access_log_has_ids_and_pseudonyms_never_tokens_or_content(tokens, start_service):
    service = start_service()
    user = uuid.uuid4()
    token = tokens(user)
    secret_content = "content-" + uuid.uuid4().hex
    with http_client(service, timeout=5) as http:
        h = {"Authorization": f"Bearer {token}", "X-Request-Id": "req-abc-123"}
        put = http.put("/v1/cache/chapter/story%2F1", json={"content": secret_content}, headers=h)
        assert put.headers["x-request-id"] == "req-abc-123"
        http.get("/v1/cache/chapter/story%2F1", headers={"Authorization": f"Bearer {token}"})
        http.get("/v1/cache/chapter/absent", headers={"Authorization": f"Bearer {token}"})
        metrics = http.get("/metrics").text
        assert metric(metrics, "cachesvc_request_duration_seconds_count",
                      {"route": "/v1/cache/{contentType}/{key}", "method": "PUT", "status": "201"}) == 1
    service.stop()  # the log read below is complete
    log = service.log_path.read_text()
    assert token not in log and secret_content not in log and str(user) not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    requests = [line for line in lines if line.get("msg") == "request"]
    put_line = next(line for line in requests if line["requestId"] == "req-abc-123")
    assert put_line["route"] == "/v1/cache/{contentType}/{key}" and put_line["status"] == 201
    assert put_line["user"] == hashlib.sha256(user.bytes).hexdigest()[:16]
    assert isinstance(put_line["ms"], float)
    assert metric(metrics, "cachesvc_cache_lookups_total", {"content_type": "chapter", "result": "hit"}) == 1
    assert metric(metrics, "cachesvc_cache_lookups_total", {"content_type": "chapter", "result": "miss"}) == 1


@pytest.mark.timing
def test_startup_retries_then_gives_up_with_a_clear_message(stack, tmp_path):
    import os
    import subprocess
    import sys

    from cachesvc.localstack import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")} | stack.env() | {
        "CACHESVC_DATABASE_URL": f"postgresql://cachesvc_app:x@127.0.0.1:{port}/cachesvc",
        "CACHESVC_STARTUP_ATTEMPTS": "3",
        "CACHESVC_CONNECT_TIMEOUT_S": "1",
        "CACHESVC_PORT": str(free_port()),
        "CACHESVC_LOG_FORMAT": "json",
    }
    result = subprocess.run([sys.executable, "-m", "cachesvc", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert result.stderr.count("retrying in") == 2
    assert f"database unreachable after 3 attempts (127.0.0.1:{port}/cachesvc)" in result.stderr


def test_metrics_report_warm_up_read_batches_and_the_pool(service, tokens):
    """Reads one after another: each is a read batch of its own, none coalesced."""
    before = metrics_text(service)
    h = {"Authorization": f"Bearer {tokens(uuid.uuid4())}"}
    with http_client(service, timeout=10, headers=h) as http:
        assert [http.get(f"/v1/cache/chapter/k{i}").status_code for i in range(3)] == [404] * 3
    after = metrics_text(service)
    assert metric(after, "cachesvc_features_warm") == 1
    moved = {name: metric(after, name) - metric(before, name)
             for name in ("cachesvc_read_batches_total", "cachesvc_reads_coalesced_total")}
    assert moved == {"cachesvc_read_batches_total": 3, "cachesvc_reads_coalesced_total": 0}
    in_use, size = (metric(after, name, {"pool": "primary"}) for name in ("cachesvc_pool_in_use", "cachesvc_pool_max"))
    assert 0 <= in_use <= size


def test_metrics_export_pgbouncers_pools_and_stats(service, tokens, stack):
    """SHOW POOLS / SHOW STATS of the service's PgBouncer, read as its stats user at scrape time."""
    before = metrics_text(service)
    assert metric(before, "cachesvc_pgbouncer_up") == 1
    h = {"Authorization": f"Bearer {tokens(uuid.uuid4())}"}
    with http_client(service, timeout=10, headers=h) as http:
        for i in range(5):
            assert http.put(f"/v1/cache/chapter/bouncer-{i}", json={"content": i}).status_code == 201
    after = metrics_text(service)
    app = {"database": "cachesvc"}
    assert metric(after, "cachesvc_pgbouncer_transactions_total", app) >= metric(before, "cachesvc_pgbouncer_transactions_total", app) + 5
    assert metric(after, "cachesvc_pgbouncer_pool_cl_waiting", app | {"user": "cachesvc_app"}) >= 0
    assert metric(after, "cachesvc_pgbouncer_pool_sv_idle", app | {"user": "cachesvc_app"}) >= 1


def test_pgbouncer_down_is_reported_not_fatal(stack, start_service):
    """A monitor DSN PgBouncer refuses (a wrong password): /metrics answers, with up = 0."""
    url = urlsplit(stack.url("cachesvc_monitor"))
    wrong = urlunsplit(url._replace(netloc=f"{url.username}:not-the-password@{url.hostname}:{url.port}"))
    service = start_service(stack, monitor_database_url=wrong)
    text = metrics_text(service)
    assert metric(text, "cachesvc_pgbouncer_up") == 0
    assert "cachesvc_pgbouncer_pool_cl_active" not in text
    assert metric(text, "cachesvc_ready") == 1
