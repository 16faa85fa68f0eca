"""The TypeScript side: types from the live /openapi.json, `tsc --noEmit`, and a typed client
run with node against the live service (through PgBouncer)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest

from cachesvc.migrations import PROJECT_ROOT

TS = PROJECT_ROOT / "tests" / "typescript"
BIN = TS / "node_modules" / ".bin"


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=TS, env=os.environ | (env or {}), capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def generated(service):
    assert shutil.which("node"), "node is not installed; scripts/bootstrap installs it"
    assert (BIN / "tsc").exists(), "npm packages missing; scripts/bootstrap installs them (npm ci)"
    result = run([str(BIN / "openapi-typescript"), f"{service.url}/openapi.json", "--default-non-nullable", "false", "-o", "src/api.d.ts"])
    assert result.returncode == 0, result.stderr
    return TS / "src" / "api.d.ts"


def test_types_generate_and_the_client_type_checks(generated):
    text = generated.read_text()
    assert '"/v1/cache/{contentType}/{key}"' in text and "CacheEntry" in text
    result = run([str(BIN / "tsc"), "--noEmit", "-p", "."])
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_type_check_rejects_a_contract_violation(generated):
    result = run([str(BIN / "tsc"), "--noEmit", "--strict", "--module", "NodeNext", "--moduleResolution", "NodeNext",
                  "--skipLibCheck", "negative/wrong_field.ts"])
    assert result.returncode != 0
    assert "tokenCnt" in result.stdout


def test_typed_client_against_the_live_service(generated, service, tokens):
    build = run([str(BIN / "tsc"), "-p", "."])
    assert build.returncode == 0, build.stdout + build.stderr
    a, b = uuid.uuid4(), uuid.uuid4()
    env = {
        "CACHESVC_URL": service.url,
        "USER_A": str(a),
        "TOKEN_A": tokens(a),
        "TOKEN_B": tokens(b),
        "TOKEN_SERVICE": tokens(service=True),
        "TOKEN_A_EXPIRED": tokens(a, ttl_seconds=-30),
    }
    result = run(["node", "dist/e2e.js"], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "11 passed, 0 failed" in result.stdout, result.stdout
