"""@cachesvc/client's getOrGenerate against the service's generate-once leases
(``POST``/``DELETE /v1/leases/{contentType}/{key}``), end to end with node.

Every client in these scripts is a separate instance, as separate server processes would
have: nothing in the client makes them agree, only the service's lease does. Each test runs
one scenario of tests/client_typescript/generate_once.mjs against the live service.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from cachesvc.migrations import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "clients" / "typescript"
SCRIPT = PROJECT_ROOT / "tests" / "client_typescript" / "generate_once.mjs"
BIN = PACKAGE / "node_modules" / ".bin"


@pytest.fixture(scope="module")
def built():
    """The package built (`npm run build`: tsc into a clean clients/typescript/dist), once for the module."""
    assert shutil.which("node"), "node is not installed; scripts/bootstrap installs it"
    assert (BIN / "tsc").exists(), "npm packages missing in clients/typescript; scripts/bootstrap installs them (npm ci)"
    result = subprocess.run(["npm", "run", "--silent", "build"], cwd=PACKAGE, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr


def scenario(name: str, service, tokens) -> None:
    env = os.environ | {"CACHESVC_URL": service.url, "TOKEN_A": tokens(uuid.uuid4()), "TOKEN_B": tokens(uuid.uuid4())}
    result = subprocess.run(["node", str(SCRIPT), name], cwd=SCRIPT.parent, env=env, capture_output=True, text=True, timeout=120)
    out = result.stdout + result.stderr
    assert result.returncode == 0 and "1 passed, 0 failed" in result.stdout, out


def test_concurrent_callers_generate_once(built, service, tokens):
    """20 concurrent getOrGenerate of one key: generate runs once, all 20 get its content."""
    scenario("single_flight", service, tokens)


def test_a_holder_that_never_stores_is_taken_over_after_its_lease(built, service, tokens):
    scenario("expired_holder", service, tokens)


def test_waiting_ends_at_max_wait_and_the_waiter_generates(built, service, tokens):
    scenario("max_wait", service, tokens)


def test_two_users_with_the_same_key_never_share_a_lease(built, service, tokens):
    scenario("per_user", service, tokens)


def test_a_throwing_generate_releases_its_lease_for_a_waiter(built, service, tokens):
    scenario("generate_throws", service, tokens)
