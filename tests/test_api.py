"""The HTTP service's health endpoints, against the real stack through PgBouncer."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
import pytest
from starlette.testclient import TestClient

from cachesvc import api, migrations, roles
from cachesvc.localstack import LOGINS, SUPERUSER, LocalStack
from tests.harness import wait_until

OLDER_REVISION = "0004"


def test_healthz_and_readyz(stack):
    with TestClient(api.create_app(stack.settings())) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"pool": True, "schema": True}
        assert ready.json()["expectedRevision"] == ready.json()["revision"] == migrations.head_revision()


@pytest.fixture
def older_stack() -> Iterator[LocalStack]:
    """A fresh stack whose database is really at an older migration revision."""
    home = Path(tempfile.mkdtemp(prefix="cachesvc-revision-"))
    s = LocalStack.throwaway(home)
    try:
        s.start(migrate=False)
        s.migrate(OLDER_REVISION)
        with psycopg.connect(s.url(SUPERUSER), autocommit=True) as conn:
            for user, group in LOGINS.items():
                roles.create_login(conn, user, group, s.passwords[user])
        yield s
    finally:
        s.stop()
        shutil.rmtree(home, ignore_errors=True)


def readiness(url: str) -> httpx2.Response | None:
    try:
        return httpx2.get(url + "/readyz", timeout=5)
    except httpx2.TransportError:
        return None  # not listening yet


def test_readyz_names_the_revision_found_and_turns_ready_after_upgrade_without_restart(older_stack, start_service):
    assert OLDER_REVISION != migrations.head_revision()
    service = start_service(older_stack, wait="none", flush_interval_s=0.2)

    def others_pass() -> httpx2.Response | None:
        assert service.proc.poll() is None, service.log.read_text()
        return readiness(service.url)

    # Wait until every other check passes: then the schema alone keeps it unready.
    res = wait_until(others_pass, 30, until=lambda res: res and res.json()["checks"]["pool"] and res.json()["features"]["ready"],
                     error=lambda res: res.text if res else "not listening")
    body = res.json()
    assert res.status_code == 503 and int(res.headers["retry-after"]) > 0
    assert body["checks"] == {"pool": True, "schema": False}
    assert (body["revision"], body["expectedRevision"]) == (OLDER_REVISION, migrations.head_revision())

    older_stack.migrate("head")
    res = wait_until(lambda: readiness(service.url), 10, until=lambda res: res.status_code == 200,
                     error=lambda res: res.text)
    assert res.json()["revision"] == migrations.head_revision()
    assert service.proc.poll() is None  # the same process: no restart
    assert service.stop() == 0
