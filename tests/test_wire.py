"""The one wire layer: every failure leaves as the error envelope, counted by what it was."""

from __future__ import annotations

import uuid

from starlette.testclient import TestClient

from cachesvc import api
from cachesvc.cache.store import CacheStore
from tests.harness import as_user, metric, metric_samples


def test_an_unexpected_exception_is_an_internal_error_not_a_database_error(stack, tokens, monkeypatch):
    async def broken(self, user_id):
        raise RuntimeError("a bug, with a detail that must not leave the service")

    monkeypatch.setattr(CacheStore, "stats", broken)  # a step of our own code fails; the database is real
    with TestClient(api.create_app(stack.settings())) as client:
        answer = client.get("/v1/cache/stats", headers=as_user(tokens, uuid.uuid4()) | {"X-Request-Id": "req-bug-1"})
        text = client.get("/metrics").text
    assert answer.status_code == 500
    assert answer.json() == {"error": {"code": "internal_error", "message": "internal error", "requestId": "req-bug-1"}}
    assert metric(text, "cachesvc_internal_errors_total") == 1
    assert metric_samples(text, "cachesvc_db_errors_total") == {}  # no kind="unexpected", nor any other
    assert metric(text, "cachesvc_request_duration_seconds_count",
                  {"route": "/v1/cache/stats", "method": "GET", "status": "500"}) == 1
