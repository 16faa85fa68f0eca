"""Fail closed: no built-in JWT secret, a service without one refuses to start, public ones are refused."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx2
import jwt
import pytest

from cachesvc import auth
from cachesvc.api import create_app
from cachesvc.localstack import JWT_SECRET_FILE, LocalStack, free_port, port_in_use
from cachesvc.migrations import PROJECT_ROOT
from cachesvc.settings import Settings, SettingsError
from tests.harness import http_client, insert_entry, wait_until

# The development secret earlier versions had built in and printed in their README: anyone has
# it, so a token signed with it is the forgery to try. It appears nowhere else in the project.
OLD_BUILT_IN_SECRET = "cachesvc-development-secret-not-for-production-use"
SUPABASE_CLI_DEFAULT = "super-secret-jwt-token-with-at-least-32-characters-long"
SYSTEMD = PROJECT_ROOT / "deploy" / "systemd"


def serve_env(stack: LocalStack, **settings: str) -> dict[str, str]:
    """The stack's environment without any JWT secret, plus ``settings`` (none of ours leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    env |= {k: v for k, v in stack.env().items() if k != "CACHESVC_JWT_SECRET"}
    return env | {"CACHESVC_PORT": str(free_port())} | {f"CACHESVC_{k.upper()}": v for k, v in settings.items()}


def serve(env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    """`cachesvc serve` that is expected to refuse; one that starts instead is killed and fails."""
    try:
        return subprocess.run([sys.executable, "-m", "cachesvc", "serve"], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the service started instead of refusing:\n{exc.stderr}")


def assert_refused(result: subprocess.CompletedProcess, env: dict[str, str], *words: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cachesvc: "), result.stderr  # one clear line, no traceback
    assert all(word in lines[0] for word in words), lines[0]
    assert not port_in_use(int(env["CACHESVC_PORT"]))


def test_serve_without_a_secret_refuses_to_start(stack):
    env = serve_env(stack)
    assert_refused(serve(env), env, "CACHESVC_JWT_SECRET", "CACHESVC_JWT_SECRET_FILE")
    # Naming development changes nothing: there is no development secret to fall back on.
    env = serve_env(stack, env="development", jwt_secret="")
    assert_refused(serve(env), env, "CACHESVC_JWT_SECRET", "CACHESVC_JWT_SECRET_FILE")


def test_create_app_refuses_without_a_secret(stack):
    settings = Settings.from_env({k: v for k, v in stack.env().items() if k != "CACHESVC_JWT_SECRET"})
    with pytest.raises(SettingsError, match="CACHESVC_JWT_SECRET_FILE"):
        create_app(settings)
    with pytest.raises(ValueError):
        auth.VerifiedTokens("", "authenticated")  # an empty HMAC key would verify tokens signed with it


def test_a_short_secret_is_refused_at_start(stack):
    env = serve_env(stack, jwt_secret="x" * 31)
    assert_refused(serve(env), env, "CACHESVC_JWT_SECRET", "31 bytes", "32")


@pytest.mark.parametrize("published", [OLD_BUILT_IN_SECRET, SUPABASE_CLI_DEFAULT], ids=["old-built-in", "supabase-cli"])
def test_a_published_secret_is_refused_at_start(stack, published):
    env = serve_env(stack, jwt_secret=published)
    assert_refused(serve(env), env, "CACHESVC_JWT_SECRET", "published")


def test_real_secrets_pass():
    for secret in (
        "k" * 32,  # exactly 256 bits
        base64.b64encode(secrets.token_bytes(64)).decode(),  # shaped like a hosted Supabase project's (88 characters)
        secrets.token_urlsafe(48),  # what the local stack makes
    ):
        assert Settings.from_env({"CACHESVC_JWT_SECRET": secret}).require_jwt_secret() == secret


def test_token_command_without_a_secret_is_a_usage_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    result = subprocess.run([sys.executable, "-m", "cachesvc", "token"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert "CACHESVC_JWT_SECRET" in result.stderr and "Traceback" not in result.stderr


def test_token_signed_with_the_old_built_in_secret_is_refused(service, tokens, admin):
    user = uuid.uuid4()
    insert_entry(admin, user, "chapter", "mine")
    now = int(time.time())
    claims = {"sub": str(user), "aud": "authenticated", "role": "authenticated", "exp": now + 60}
    old = jwt.encode(claims, OLD_BUILT_IN_SECRET, algorithm="HS256")
    old_service = jwt.encode(claims | {"sub": "svc", "role": auth.SERVICE_ROLE}, OLD_BUILT_IN_SECRET, algorithm="HS256")
    expired = tokens(user, ttl_seconds=-30)
    with http_client(service) as http:
        for token in (old, expired):
            bearer = {"Authorization": f"Bearer {token}"}
            assert http.get("/v1/cache/chapter/mine", headers=bearer).status_code == 401
            lookup = http.post("/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": "mine"}]}, headers=bearer)
            assert lookup.status_code == 401
            assert http.delete("/v1/cache", headers=bearer).status_code == 401
        as_service = {"Authorization": f"Bearer {old_service}", "X-Cache-User": str(user)}
        assert http.get("/v1/cache/chapter/mine", headers=as_service).status_code == 401
        assert http.get("/v1/features/k", headers={"Authorization": f"Bearer {old_service}"}).status_code == 401
        # The configured secret's token reads the same entry: the refusals above are the secret's doing.
        ok = http.get("/v1/cache/chapter/mine", headers={"Authorization": f"Bearer {tokens(user)}"})
        assert ok.status_code == 200, ok.text


def test_serve_reads_the_secret_from_a_file(stack, tmp_path):
    """The systemd unit's way: CACHESVC_JWT_SECRET_FILE names a credential file."""
    secret = secrets.token_urlsafe(48)
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(secret + "\n")
    env = serve_env(stack, jwt_secret_file=str(secret_file))
    with open(tmp_path / "serve.log", "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "cachesvc", "serve"], env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{env['CACHESVC_PORT']}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx2.get(url + "/readyz", timeout=2).status_code == 200
            except httpx2.TransportError:
                return False

        wait_until(ready, 30, error=lambda _: (tmp_path / "serve.log").read_text())
        user = str(uuid.uuid4())
        good = {"Authorization": f"Bearer {auth.mint(secret, sub=user)}"}
        assert httpx2.get(url + "/v1/cache/chapter/none", headers=good, timeout=10).status_code == 404  # a miss, not 401
        for other in (stack.jwt_secret, OLD_BUILT_IN_SECRET):
            forged = {"Authorization": f"Bearer {auth.mint(other, sub=user)}"}
            assert httpx2.get(url + "/v1/cache/chapter/none", headers=forged, timeout=10).status_code == 401
    finally:
        proc.terminate()
        proc.wait(30)


def test_each_dev_home_has_its_own_private_secret_kept_across_restarts(tmp_path):
    first = LocalStack.persistent(tmp_path / "a", free_port(), free_port())
    again = LocalStack.persistent(tmp_path / "a", free_port(), free_port())
    other = LocalStack.persistent(tmp_path / "b", free_port(), free_port())
    assert first.jwt_secret == again.jwt_secret != other.jwt_secret
    assert len(first.jwt_secret.encode()) >= 32
    secret_file = tmp_path / "a" / JWT_SECRET_FILE
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert first.env()["CACHESVC_JWT_SECRET"] == secret_file.read_text().strip()
    assert LocalStack.throwaway(tmp_path / "c").jwt_secret != LocalStack.throwaway(tmp_path / "d").jwt_secret


def test_no_built_in_secret_is_left_in_the_project():
    """Only this test names the old secret (as the forgery to try)."""
    files = [PROJECT_ROOT / name for name in ("README.md", "BENCHMARKS.md", "alembic.ini", "pyproject.toml")]
    for top in ("cachesvc", "scripts", "deploy", "docs", "tests", "sql", "alembic", ".ci"):
        files += [p for p in (PROJECT_ROOT / top).rglob("*")
                  if p.is_file() and "node_modules" not in p.parts and p.suffix not in (".pyc",)]
    holders = [str(p.relative_to(PROJECT_ROOT)) for p in files
               if p != Path(__file__) and OLD_BUILT_IN_SECRET in p.read_text(errors="replace")]
    assert holders == []


# -- the service's systemd unit --------------------------------------------------------


def unit_keys(path: Path) -> dict[str, list[str]]:
    """``Section.Key`` -> every value given (systemd allows a key more than once)."""
    keys: dict[str, list[str]] = {}
    section = ""
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        keys.setdefault(f"{section}.{key}", []).append(value)
    return keys


def test_service_unit_is_hardened_and_takes_the_secret_from_a_file():
    keys = unit_keys(SYSTEMD / "cachesvc.service")
    expected = {
        "Service.User": "cachesvc", "Service.NoNewPrivileges": "yes", "Service.ProtectSystem": "strict",
        "Service.PrivateTmp": "yes", "Service.ProtectHome": "yes", "Service.Restart": "on-failure",
        "Service.RestartPreventExitStatus": "2", "Service.CapabilityBoundingSet": "", "Install.WantedBy": "multi-user.target",
    }
    assert {k: keys.get(k, [None])[-1] for k in expected} == expected
    assert "jwt-secret:/etc/cachesvc/jwt-secret" in keys["Service.LoadCredential"]
    assert "CACHESVC_JWT_SECRET_FILE=%d/jwt-secret" in keys["Service.Environment"]
    assert keys["Service.ExecStart"] == ["/opt/cachesvc/.venv/bin/cachesvc serve"]
    assert (PROJECT_ROOT / ".venv" / "bin" / "cachesvc").exists()
    # The secret never travels as a plain environment variable.
    assert not any(v.startswith("CACHESVC_JWT_SECRET=") for v in keys.get("Service.Environment", []))


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_units_verify(tmp_path):
    """`systemd-analyze verify` on every unit, with /opt/cachesvc mapped to this checkout (its
    commands must exist); an unknown or misspelled directive is only a warning, so any output fails."""
    for unit in SYSTEMD.iterdir():
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/cachesvc", str(PROJECT_ROOT)))
    units = sorted(str(p) for p in tmp_path.iterdir())
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *units],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
