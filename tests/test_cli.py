"""The `cachesvc` command line: settings, tokens, logins, migrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import jwt
import psycopg
import pytest

from cachesvc import auth
from cachesvc.settings import Settings, SettingsError

SECRET = "a-test-secret-that-is-long-enough-for-hs256-and-for-hs512-too-64b+"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cachesvc", *args],
        env=os.environ | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_token_round_trip_and_forgeries_refused():
    user = str(uuid.uuid4())
    result = run_cli("token", "--sub", user, env={"CACHESVC_JWT_SECRET": SECRET})
    assert result.returncode == 0, result.stderr
    token = result.stdout.strip()
    assert auth.verify(token, SECRET, "authenticated") == auth.Principal(user, "authenticated")
    # Forged: right claims, wrong secret.
    forged = auth.mint("another-secret-that-is-long-enough-for-hs256", sub=user)
    with pytest.raises(auth.AuthError, match="invalid token"):
        auth.verify(forged, SECRET, "authenticated")
    # Expired.
    expired = jwt.encode({"sub": user, "aud": "authenticated", "exp": int(time.time()) - 10}, SECRET, algorithm="HS256")
    with pytest.raises(auth.AuthError, match="expired"):
        auth.verify(expired, SECRET, "authenticated")
    # alg: none, and a token without exp.
    unsigned = jwt.encode({"sub": user, "aud": "authenticated", "exp": int(time.time()) + 60}, None, algorithm="none")
    with pytest.raises(auth.AuthError):
        auth.verify(unsigned, SECRET, "authenticated")
    no_exp = jwt.encode({"sub": user, "aud": "authenticated"}, SECRET, algorithm="HS256")
    with pytest.raises(auth.AuthError, match="exp"):
        auth.verify(no_exp, SECRET, "authenticated")
    # Another algorithm, even with the right secret, and the wrong audience.
    hs512 = jwt.encode({"sub": user, "aud": "authenticated", "exp": int(time.time()) + 60}, SECRET, algorithm="HS512")
    with pytest.raises(auth.AuthError):
        auth.verify(hs512, SECRET, "authenticated")
    with pytest.raises(auth.AuthError):
        auth.verify(auth.mint(SECRET, sub=user, audience="anon"), SECRET, "authenticated")


def test_token_refuses_a_non_uuid_user():
    result = run_cli("token", "--sub", "not-a-uuid", env={"CACHESVC_JWT_SECRET": SECRET})
    assert result.returncode == 2
    assert "uuid" in result.stderr


def test_settings_from_env_and_file(tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    s = Settings.from_env({"CACHESVC_JWT_SECRET_FILE": str(secret_file), "CACHESVC_POOL_SIZE": "4"})
    assert s.jwt_secret == SECRET and s.database.pool_size == 4
    with pytest.raises(SettingsError, match="CACHESVC_POOL_SIZE"):
        Settings.from_env({"CACHESVC_POOL_SIZE": "many"})
    with pytest.raises(SettingsError, match="JWT_SECRET"):
        Settings.from_env({"CACHESVC_ENV": "production"}).require_jwt_secret()
    assert Settings.from_env({}).jwt_secret == ""  # none built in


def test_settings_command_masks_secrets(stack):
    result = run_cli("settings", env=stack.env())
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["CACHESVC_DATABASE_URL"].startswith("postgresql://cachesvc_app:***@")
    assert all(pw not in result.stdout for pw in stack.passwords.values())


def test_bad_setting_is_a_usage_error():
    result = run_cli("settings", env={"CACHESVC_PORT": "eighty"})
    assert result.returncode == 2
    assert "CACHESVC_PORT" in result.stderr


def test_create_login_makes_a_member_that_cannot_bypass_rls(stack, admin):
    name = "probe_" + uuid.uuid4().hex[:8]
    result = run_cli(
        "roles", "create-login", name, "--group", "cache_app", "--password-env", "PROBE_PW",
        env=stack.env() | {"PROBE_PW": "probe-password-123"},
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"login": name, "group": "cache_app", "created": True}
    row = admin.execute(
        "SELECT rolcanlogin, rolsuper, rolbypassrls, pg_has_role(rolname, 'cache_app', 'USAGE'),"
        " (SELECT array_agg(c) FROM unnest(rolconfig) c)"
        " FROM pg_roles WHERE rolname = %s",
        (name,),
    ).fetchone()
    assert row[:4] == (True, False, False, True)
    assert "max_parallel_workers_per_gather=0" in row[4]
    with psycopg.connect(f"postgresql://{name}:probe-password-123@127.0.0.1:{stack.pg_port}/cachesvc") as conn:
        assert conn.execute("SELECT count(*) FROM infinite_pages_cache_partitioned").fetchone() == (0,)
    admin.execute(f"DROP OWNED BY {name}; DROP ROLE {name}")


def test_create_login_refuses_an_unknown_group(stack):
    result = run_cli("roles", "create-login", "x", "--group", "superuser", env=stack.env())
    assert result.returncode == 2


def test_db_upgrade_is_idempotent(stack):
    result = run_cli("db", "upgrade", env=stack.env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["action"] == "upgrade"


def test_settings_doc_documents_every_setting():
    from cachesvc.migrations import PROJECT_ROOT
    from cachesvc.settings import env_name, walk

    doc = (PROJECT_ROOT / "docs" / "settings.md").read_text()
    names = [env_name(f) for _, f in walk()]
    assert len(names) == len(set(names))  # every variable once, in whichever group
    assert {"CACHESVC_POOL_SIZE", "CACHESVC_READ_DATABASE_URL", "CACHESVC_FEATURES_SCHEMA", "CACHESVC_PGBOUNCER_POOL_SIZE",
            "CACHESVC_DEV_PG_PORT", "CACHESVC_PARTITIONS_AHEAD", "CACHESVC_JWT_SECRET"} <= set(names)
    assert [name for name in names if f"`{name}`" not in doc] == []
