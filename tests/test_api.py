"""The HTTP service's health endpoints, against the real stack through PgBouncer."""

from __future__ import annotations

from starlette.testclient import TestClient

from cachesvc import api, migrations


def test_healthz_and_readyz(stack):
    with TestClient(api.create_app(stack.settings())) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"pool": True, "schema": True}
        assert ready.json()["expectedRevision"] == migrations.head_revision()


def test_readyz_refuses_when_schema_is_not_at_the_expected_revision(stack):
    with TestClient(api.create_app(stack.settings())) as client:
        client.app.state.expected_revision = "not-a-revision"
        ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"pool": True, "schema": False}
