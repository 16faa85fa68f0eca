"""One PostgreSQL cluster of our own: initdb on first start, then ``postgres`` on a port."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from cachesvc.localstack.processes import (
    StackError,
    alive,
    as_user,
    check_runnable,
    give,
    port_in_use,
    run_as,
    spawn,
    stop_process,
    tail,
)

MIN_PG_MAJOR = 14
SUPERUSER = "cachesvc_admin"


def find_pg_bindir() -> Path:
    """Directory of ``initdb``/``postgres``: ``CACHESVC_PG_BINDIR``, else the newest >= 14."""
    override = os.environ.get("CACHESVC_PG_BINDIR")
    if override:
        return Path(override)
    candidates = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            major = int(bindir.parent.name)
        except ValueError:
            continue
        if major >= MIN_PG_MAJOR and (bindir / "initdb").exists():
            candidates.append((major, bindir))
    if candidates:
        return max(candidates)[1]
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).parent
    raise StackError(
        f"PostgreSQL server binaries (>= {MIN_PG_MAJOR}) not found; run scripts/bootstrap "
        "or install the 'postgresql' OS package, or set CACHESVC_PG_BINDIR"
    )


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster in ``base/pgdata``, listening on 127.0.0.1:``port``."""

    base: Path
    port: int
    password: str
    conf: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    @property
    def datadir(self) -> Path:
        return self.base / "pgdata"

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    def url(self, user: str = SUPERUSER, password: str | None = None, dbname: str = "postgres") -> str:
        password = self.password if password is None else password
        return f"postgresql://{user}:{password}@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60) -> None:
        owner = run_as()
        bindir = find_pg_bindir()
        self.base.mkdir(parents=True, exist_ok=True)
        give(self.base, owner)
        check_runnable(self.base, owner)
        pid_file = self.datadir / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            if alive(pid):
                raise StackError(
                    f"a PostgreSQL (pid {pid}) already runs on {self.datadir}; it was not started "
                    "by this process and will not be touched: stop it, or use another CACHESVC_HOME"
                )
        if port_in_use(self.port):
            raise StackError(f"port {self.port} is already in use; choose another (CACHESVC_PG_PORT)")
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(bindir, owner)
        (self.base / "run").mkdir(exist_ok=True)
        give(self.base / "run", owner)
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.base / "run"),
            "max_connections": "200",
            "shared_buffers": "128MB",
            "logging_collector": "off",
        } | self.conf
        argv = [str(bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self.proc = spawn(argv, self.logfile, owner)
        self._wait_ready(timeout)

    def _initdb(self, bindir: Path, owner: pwd.struct_passwd | None) -> None:
        pwfile = self.base / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        give(pwfile, owner)
        try:
            result = subprocess.run(
                [
                    str(bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                    f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--no-locale",
                ],
                capture_output=True, text=True, **as_user(owner),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StackError(f"postgres exited ({self.proc.returncode}); see {self.logfile}:\n{tail(self.logfile)}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise StackError(f"postgres not ready after {timeout}s; see {self.logfile}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGINT)  # fast shutdown: roll back, checkpoint, exit
        self.proc = None
