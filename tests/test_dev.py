"""The README's first command: `scripts/dev` brings the whole stack up and takes it down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path


from cachesvc import auth
from cachesvc.localstack import LocalPostgres, free_port, port_in_use
from cachesvc.localstack.processes import alive as _alive
from cachesvc.migrations import PROJECT_ROOT
from tests.harness import dev_env, start_dev, wait_until

DEV = PROJECT_ROOT / "scripts" / "dev"


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def server_pids(home: Path) -> list[int]:
    pg = int((home / "postgres" / "pgdata" / "postmaster.pid").read_text().split()[0])
    bouncer = int((home / "pgbouncer" / "pgbouncer.pid").read_text().strip())
    return [pg, bouncer]


def wait_gone(pids: list[int], timeout: float = 30) -> bool:
    try:
        wait_until(lambda: not any(_alive(p) for p in pids), timeout, "the servers to exit", interval=0.1)
    except AssertionError:
        return False
    return True


def test_dev_comes_up_prints_what_a_newcomer_needs_and_stops_cleanly(dev_home, tmp_path):
    env = dev_env(dev_home)
    log = tmp_path / "dev.log"
    proc = start_dev(env, log)
    base = f"http://127.0.0.1:{env['CACHESVC_PORT']}"
    try:
        status, body = get(base + "/readyz")
        assert status == 200, body
        printed = log.read_text()
        token = re.search(r"user token\s+(\S+)", printed).group(1)
        secret = re.search(r"JWT secret\s+(\S+)", printed).group(1)
        assert auth.verify(token, secret, "authenticated").role == "authenticated"
        assert secret == (dev_home / "jwt-secret").read_text().strip()  # random per home, kept there (0600)
        env_file = (dev_home / "env").read_text()
        for name in ("CACHESVC_DATABASE_URL", "CACHESVC_ADMIN_DATABASE_URL", "CACHESVC_JWT_SECRET", "PGPORT"):
            assert f"export {name}=" in env_file
        # After `source env`, psql and the CLI talk to this stack.
        probe = subprocess.run(
            ["bash", "-c", f"source {dev_home / 'env'} && psql -XtAc 'SELECT count(*) FROM partition_health_metrics'"
             f" && {PROJECT_ROOT / '.venv/bin/cachesvc'} db upgrade"],
            env={k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")},
            capture_output=True, text=True, timeout=60,
        )
        assert probe.returncode == 0, probe.stderr
        assert int(probe.stdout.split()[0]) >= 8
        pids = server_pids(dev_home)
        assert all(_alive(p) for p in pids)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    assert wait_gone(pids), "a server outlived scripts/dev"
    for port in ("CACHESVC_PORT", "CACHESVC_DEV_PG_PORT", "CACHESVC_DEV_PGBOUNCER_PORT"):
        assert not port_in_use(int(env[port]))

    # Second run: the cluster and its data are kept; Ctrl-C (SIGINT) stops it too.
    proc = start_dev(env, log)
    pids = server_pids(dev_home)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    assert wait_gone(pids)


def test_dev_never_touches_a_postgres_it_did_not_start(dev_home, tmp_path):
    dev_home.chmod(0o755)  # reachable by the server's OS user when we are root
    foreign = LocalPostgres(dev_home / "postgres", free_port(), "foreign-password")
    foreign.start()
    try:
        env = dev_env(dev_home)
        result = subprocess.run([str(DEV)], env=env, capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
        assert result.returncode == 1
        assert "already runs" in result.stderr and "will not be touched" in result.stderr
        assert foreign.proc.poll() is None  # still running, untouched
    finally:
        foreign.stop()


def test_dev_with_a_standby_reads_from_it_and_stops_it(dev_home, tmp_path):
    """`scripts/dev --standby`: the Scaling section's setup with the README's run command."""
    env = dev_env(dev_home)
    log = tmp_path / "dev-standby.log"
    proc = start_dev(env, log, "--standby")
    base = f"http://127.0.0.1:{env['CACHESVC_PORT']}"
    try:
        replica = wait_until(lambda: get(base + "/readyz")[1]["replica"], 30, "the standby in use",
                             until=lambda r: r.get("state") == "ok")
        assert replica["configured"] is True
        assert re.search(r"read replica\s+postgresql://cachesvc_app:\S+@127\.0\.0\.1:\d+/cachesvc", log.read_text())
        standby_pg = int((dev_home / "standby" / "pgdata" / "postmaster.pid").read_text().split()[0])
        standby_bouncer = int((dev_home / "standby" / "pgbouncer" / "pgbouncer.pid").read_text().strip())
        pids = server_pids(dev_home) + [standby_pg, standby_bouncer]
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, log.read_text()
    assert wait_gone(pids), "a server outlived scripts/dev --standby"
