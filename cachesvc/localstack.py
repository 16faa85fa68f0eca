"""The embedded local stack: a PostgreSQL cluster of our own plus PgBouncer in front of it.

Optionally (``LocalStack.start_standby()``) a hot standby of that cluster, made with
``pg_basebackup -R`` and kept current by streaming replication, with a PgBouncer of its own:
the read replica of the Scaling section, for tests and benchmarks.

One implementation shared by ``scripts/dev`` (a persistent cluster under ``$CACHESVC_HOME``),
the test suite and the benchmarks (throwaway clusters on free ports). It only ever starts,
and stops, servers it started itself: an occupied data directory or port is an error, never
something to take over.

``initdb``, ``postgres`` and ``pgbouncer`` refuse to run as root, so when we are root they
run as the unprivileged ``postgres`` OS user (created by the OS package), in directories
that user owns. Children get a parent-death signal, so a killed parent leaves no stray
server behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from cachesvc import pgbouncer, roles
from cachesvc.settings import Settings

MIN_PG_MAJOR = 14
SERVICE_OS_USER = "postgres"
DATABASE = "cachesvc"

# Login users the stack creates, one per group role.
LOGINS = {
    "cachesvc_app": "cache_app",
    "cachesvc_maintainer": "cache_maintainer",
    "cachesvc_monitor": "cache_monitor",
}
SUPERUSER = "cachesvc_admin"
# The login a standby streams WAL with: REPLICATION, nothing else (no superuser, no data).
REPLICATOR = "cachesvc_replicator"
# Under a persistent stack's home: its JWT secret (mode 0600), made on the first run.
JWT_SECRET_FILE = "jwt-secret"


class StackError(RuntimeError):
    """The local stack cannot be started; the message says what to do."""


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


def find_pgbouncer() -> Path:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    if not found:
        raise StackError("pgbouncer not found; run scripts/bootstrap or install the 'pgbouncer' OS package")
    return Path(found)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _run_as() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_OS_USER)
    except KeyError:
        raise StackError(
            f"running as root, and there is no '{SERVICE_OS_USER}' OS user to run PostgreSQL as; "
            "install the 'postgresql' OS package (scripts/bootstrap does)"
        ) from None


def _give(path: Path, owner: pwd.struct_passwd | None) -> None:
    """Make ``path`` (recursively) owned by the OS user the servers run as."""
    if owner is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, owner.pw_uid, owner.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _spawn(argv: list[str], log: Path, owner: pwd.struct_passwd | None) -> subprocess.Popen:
    log_fh = open(log, "ab")
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them in order
            preexec_fn=_die_with_parent,
        )
    finally:
        log_fh.close()


def _check_runnable(path: Path, owner: pwd.struct_passwd | None) -> None:
    """The server user must be able to reach ``path`` (e.g. a checkout under /root is not)."""
    if owner is None:
        return
    probe = subprocess.run(
        ["test", "-w", str(path)], user=owner.pw_uid, group=owner.pw_gid, extra_groups=[]
    )
    if probe.returncode != 0:
        raise StackError(
            f"the '{owner.pw_name}' OS user cannot write {path} (a parent directory is not "
            "searchable by it); set CACHESVC_HOME to a directory it can reach, e.g. /var/tmp/cachesvc"
        )


def _stop_process(proc: subprocess.Popen | None, sig: int, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
        owner = _run_as()
        bindir = find_pg_bindir()
        self.base.mkdir(parents=True, exist_ok=True)
        _give(self.base, owner)
        _check_runnable(self.base, owner)
        pid_file = self.datadir / "postmaster.pid"
        if pid_file.exists():
            pid = int(pid_file.read_text().split()[0])
            if _alive(pid):
                raise StackError(
                    f"a PostgreSQL (pid {pid}) already runs on {self.datadir}; it was not started "
                    "by this process and will not be touched: stop it, or use another CACHESVC_HOME"
                )
        if port_in_use(self.port):
            raise StackError(f"port {self.port} is already in use; choose another (CACHESVC_PG_PORT)")
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(bindir, owner)
        (self.base / "run").mkdir(exist_ok=True)
        _give(self.base / "run", owner)
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
        self.proc = _spawn(argv, self.logfile, owner)
        self._wait_ready(timeout)

    def _initdb(self, bindir: Path, owner: pwd.struct_passwd | None) -> None:
        pwfile = self.base / "initdb.pw"
        pwfile.write_text(self.password + "\n")
        _give(pwfile, owner)
        try:
            result = subprocess.run(
                [
                    str(bindir / "initdb"), "-D", str(self.datadir), "-U", SUPERUSER,
                    f"--pwfile={pwfile}", "--auth-local=peer", "--auth-host=scram-sha-256",
                    "--encoding=UTF8", "--no-locale",
                ],
                capture_output=True, text=True,
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed:\n{result.stdout}{result.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StackError(f"postgres exited ({self.proc.returncode}); see {self.logfile}:\n{_tail(self.logfile)}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise StackError(f"postgres not ready after {timeout}s; see {self.logfile}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        _stop_process(self.proc, signal.SIGINT)  # fast shutdown: roll back, checkpoint, exit
        self.proc = None


@dataclass
class LocalPgBouncer:
    """PgBouncer started from the files ``cachesvc pgbouncer config`` wrote into ``directory``."""

    directory: Path
    port: int
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        owner = _run_as()
        _give(self.directory, owner)
        if port_in_use(self.port):
            raise StackError(f"port {self.port} is already in use; choose another (CACHESVC_PGBOUNCER_PORT)")
        log = self.directory / "pgbouncer.stdout"
        self.proc = _spawn([str(find_pgbouncer()), str(self.directory / "pgbouncer.ini")], log, owner)
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port):
            if self.proc.poll() is not None:
                raise StackError(f"pgbouncer exited ({self.proc.returncode}):\n{_tail(log)}{_tail(self.directory / 'pgbouncer.log')}")
            if time.monotonic() > deadline:
                raise StackError(f"pgbouncer not listening after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        _stop_process(self.proc, signal.SIGTERM)  # immediate shutdown: clients are gone already
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def base_backup(primary: LocalPostgres, datadir: Path, user: str, password: str) -> None:
    """``pg_basebackup -R`` of ``primary`` into ``datadir``: a standby's data directory.

    ``-R`` writes ``standby.signal`` and ``primary_conninfo``; ``-X stream`` streams the WAL
    written during the copy, so the copy is consistent on its own.
    """
    owner = _run_as()
    datadir.parent.mkdir(parents=True, exist_ok=True)
    _give(datadir.parent, owner)
    result = subprocess.run(
        [
            str(find_pg_bindir() / "pg_basebackup"), "-D", str(datadir), "-R", "-X", "stream",
            "--checkpoint=fast", "-h", "127.0.0.1", "-p", str(primary.port), "-U", user, "--no-password",
        ],
        capture_output=True, text=True, env=os.environ | {"PGPASSWORD": password},
        user=owner.pw_uid if owner else None,
        group=owner.pw_gid if owner else None,
        extra_groups=[] if owner else None,
    )
    if result.returncode != 0:
        raise StackError(f"pg_basebackup failed:\n{result.stdout}{result.stderr}")


@dataclass
class LocalStandby:
    """A hot standby of a LocalPostgres (its own data directory and port) and its PgBouncer."""

    postgres: LocalPostgres
    bouncer: LocalPgBouncer

    def start(self) -> None:
        self.postgres.start()
        self.bouncer.start()

    def stop(self) -> None:
        self.bouncer.stop()
        self.postgres.stop()

    def replay_lsn(self) -> int:
        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            return conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").fetchone()[0]

    def wait_replayed(self, primary: LocalPostgres, timeout: float = 30) -> None:
        """Wait until the standby has replayed every transaction the primary has committed so far.

        A throwaway primary runs with synchronous_commit off, so a commit may still sit in the
        WAL buffers: a synchronous commit of a transaction that wrote WAL (a temporary table,
        gone at its commit) first writes out everything before it.
        """
        with psycopg.connect(primary.url(), autocommit=True) as conn:
            with conn.transaction():
                conn.execute("SET LOCAL synchronous_commit = on")
                conn.execute("CREATE TEMPORARY TABLE wal_flush () ON COMMIT DROP")
            target = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0]
        deadline = time.monotonic() + timeout
        while self.replay_lsn() < target:
            if time.monotonic() > deadline:
                raise StackError(f"standby has not replayed the primary's WAL after {timeout}s")
            time.sleep(0.02)


@dataclass
class LocalStack:
    """PostgreSQL + migrations + login users + PgBouncer, described by ``env()``."""

    home: Path
    pg_port: int
    bouncer_port: int
    passwords: dict[str, str]
    pg_conf: dict[str, str] = field(default_factory=dict)
    postgres: LocalPostgres | None = None
    bouncer: LocalPgBouncer | None = None
    standby: LocalStandby | None = None
    standby_ports: tuple[int, int] | None = None  # (PostgreSQL, PgBouncer) of the standby
    # The HS256 secret of this stack's service and of the tokens minted for it: random, never built in.
    jwt_secret: str = field(default_factory=lambda: new_jwt_secret())

    @classmethod
    def throwaway(cls, home: Path, **pg_conf: str) -> LocalStack:
        """Free ports, fresh random passwords and JWT secret, durability off: for tests and benchmarks."""
        conf = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"} | pg_conf
        return cls(home, free_port(), free_port(), new_passwords(), conf)

    @classmethod
    def persistent(cls, home: Path, pg_port: int, bouncer_port: int) -> LocalStack:
        """Kept across runs under ``home`` (``scripts/dev``); passwords and JWT secret made once and kept."""
        home.mkdir(parents=True, exist_ok=True)
        secrets_file = home / "passwords.json"
        if secrets_file.exists():
            passwords = json.loads(secrets_file.read_text())
        else:
            passwords = new_passwords()
            secrets_file.touch(mode=0o600)
            secrets_file.write_text(json.dumps(passwords, indent=2))
        secret_file = home / JWT_SECRET_FILE
        if not secret_file.exists():
            _write_private(secret_file, new_jwt_secret() + "\n")
        return cls(home, pg_port, bouncer_port, passwords, jwt_secret=secret_file.read_text().strip())

    def url(self, user: str, *, direct: bool = False, dbname: str = DATABASE, standby: bool = False) -> str:
        """A DSN of ``user``: through PgBouncer, or ``direct`` (the superuser always is);
        of the primary, or of the ``standby``."""
        if standby:
            if self.standby_ports is None:
                raise StackError("this stack has no standby; call start_standby() first")
            pg_port, bouncer_port = self.standby_ports
        else:
            pg_port, bouncer_port = self.pg_port, self.bouncer_port
        port = pg_port if direct or user == SUPERUSER else bouncer_port
        return f"postgresql://{user}:{self.passwords[user]}@127.0.0.1:{port}/{dbname}"

    def env(self) -> dict[str, str]:
        """The CACHESVC_* variables that point every tool at this stack (and its standby)."""
        env = {
            "CACHESVC_DATABASE_URL": self.url("cachesvc_app"),
            "CACHESVC_ADMIN_DATABASE_URL": self.url(SUPERUSER),
            "CACHESVC_MONITOR_DATABASE_URL": self.url("cachesvc_monitor"),
            "CACHESVC_PGBOUNCER_ADMIN_USERS": "cachesvc_monitor",
            "CACHESVC_JWT_SECRET": self.jwt_secret,
        }
        if self.standby_ports is not None:
            env["CACHESVC_READ_DATABASE_URL"] = self.url("cachesvc_app", standby=True)
        return env

    def settings(self, **overrides) -> Settings:
        return Settings.from_env(self.env() | {f"CACHESVC_{k.upper()}": str(v) for k, v in overrides.items()})

    def start(self, *, migrate: bool = True, log=lambda msg: None) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        if _run_as() is not None:  # the server user must be able to pass through (not list) home
            self.home.chmod(self.home.stat().st_mode | 0o011)
        self.postgres = LocalPostgres(self.home / "postgres", self.pg_port, self.passwords[SUPERUSER], self.pg_conf)
        log(f"starting PostgreSQL on 127.0.0.1:{self.pg_port} ({self.postgres.datadir})")
        self.postgres.start()
        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone():
                conn.execute(f"CREATE DATABASE {DATABASE}")
        if migrate:
            log("migrating to head")
            self.migrate()
            with psycopg.connect(self.url(SUPERUSER), autocommit=True) as conn:
                for user, group in LOGINS.items():
                    roles.create_login(conn, user, group, self.passwords[user])
        directory = self.home / "pgbouncer"
        cfg = pgbouncer.config_from_settings(self.settings(), directory)
        pgbouncer.write(cfg)
        self.bouncer = LocalPgBouncer(directory, self.bouncer_port)
        log(f"starting PgBouncer on 127.0.0.1:{self.bouncer_port} (transaction mode)")
        self.bouncer.start()

    def start_standby(self, *, log=lambda msg: None) -> LocalStandby:
        """A hot standby of the running primary, on free ports, and a PgBouncer in front of it.

        Opt-in (only the tests and benchmarks of read replicas pay for it). The standby streams
        as a REPLICATION-only login over TCP with SCRAM (initdb's pg_hba already has the
        ``host replication`` lines); it has the primary's roles, policies and data, read-only.
        Its PgBouncer is rendered by the same code as the primary's, from the read DSN.
        """
        if self.postgres is None:
            raise StackError("start the primary first")
        password = self.passwords.setdefault(REPLICATOR, secrets.token_urlsafe(18))
        with psycopg.connect(self.postgres.url(), autocommit=True) as conn:
            roles.create_replication_login(conn, REPLICATOR, password)
        self.standby_ports = (free_port(), free_port())
        base = self.home / "standby"
        postgres = LocalPostgres(base, self.standby_ports[0], self.passwords[SUPERUSER], self.pg_conf | {"hot_standby": "on"})
        log(f"copying the primary into a standby ({postgres.datadir})")
        base_backup(self.postgres, postgres.datadir, REPLICATOR, password)
        directory = base / "pgbouncer"
        standby_settings = self.settings(
            database_url=self.url("cachesvc_app", standby=True),
            admin_database_url=self.url(SUPERUSER, standby=True),
            monitor_database_url=self.url("cachesvc_monitor", standby=True),
        )
        pgbouncer.write(pgbouncer.config_from_settings(standby_settings, directory))
        self.standby = LocalStandby(postgres, LocalPgBouncer(directory, self.standby_ports[1]))
        log(f"starting the standby on 127.0.0.1:{self.standby_ports[0]}, its PgBouncer on {self.standby_ports[1]}")
        self.standby.start()
        return self.standby

    def migrate(self, revision: str = "head", dbname: str = DATABASE) -> None:
        from cachesvc import migrations

        migrations.upgrade(self.url(SUPERUSER, dbname=dbname), revision)

    def stop(self) -> None:
        if self.standby:
            self.standby.stop()
        if self.bouncer:
            self.bouncer.stop()
        if self.postgres:
            self.postgres.stop()

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def new_passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(18) for user in [SUPERUSER, *LOGINS]}


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(48)  # 384 random bits, 64 characters


def _write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (mode 0600, whatever the umask), then fill it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""


class ServiceProcess:
    """``cachesvc serve`` in a subprocess on a free port, against ``stack`` (benchmarks).

    Its environment is the stack's DSNs plus ``settings`` (``pool_size=4`` becomes
    ``CACHESVC_POOL_SIZE=4``); nothing of the caller's own ``CACHESVC_*`` leaks in.
    """

    def __init__(self, stack: LocalStack, log: Path, **settings) -> None:
        import sys

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
        env |= stack.env() | {"CACHESVC_PORT": str(self.port), "CACHESVC_LOG_FORMAT": "json"}
        env |= {f"CACHESVC_{k.upper()}": str(v) for k, v in settings.items()}
        self.env = env
        self.started = time.perf_counter()
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cachesvc", "serve"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds from start until ``/readyz`` answered 200."""
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StackError(f"service exited {self.proc.returncode}:\n{_tail(self.log, 40)}")
            try:
                if urllib.request.urlopen(self.url + "/readyz", timeout=2).status == 200:
                    return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:  # a service that never became ready is not left running
                self.proc.kill()
                self.proc.wait()
                raise StackError(f"service not ready after {timeout}s:\n{_tail(self.log, 40)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit code; one that does not stop in time is killed and reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise StackError(f"service did not stop within {timeout} s of SIGTERM; its log ends:\n{_tail(self.log, 30)}") from None
