"""The stack: PostgreSQL + migrations + login users + PgBouncer (+ an opt-in standby)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from cachesvc import pgbouncer, roles
from cachesvc.localstack.pgbouncer import LocalPgBouncer
from cachesvc.localstack.postgres import SUPERUSER, LocalPostgres
from cachesvc.localstack.processes import StackError, free_port, run_as, write_private
from cachesvc.localstack.standby import REPLICATOR, LocalStandby, base_backup
from cachesvc.settings import Settings

DATABASE = "cachesvc"

# Login users the stack creates, one per group role.
LOGINS = {
    "cachesvc_app": "cache_app",
    "cachesvc_maintainer": "cache_maintainer",
    "cachesvc_monitor": "cache_monitor",
}
# Under a persistent stack's home: its JWT secret (mode 0600), made on the first run.
JWT_SECRET_FILE = "jwt-secret"


def new_passwords() -> dict[str, str]:
    return {user: secrets.token_urlsafe(18) for user in [SUPERUSER, *LOGINS]}


def new_jwt_secret() -> str:
    return secrets.token_urlsafe(48)  # 384 random bits, 64 characters


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
    # The primary's server binaries (None: find_pg_bindir(); the standby follows the cluster's version).
    bindir: Path | None = None
    # The HS256 secret of this stack's service and of the tokens minted for it: random, never built in.
    jwt_secret: str = field(default_factory=lambda: new_jwt_secret())

    @classmethod
    def throwaway(cls, home: Path, *, bindir: Path | None = None, **pg_conf: str) -> LocalStack:
        """Free ports, fresh random passwords and JWT secret, durability off: for tests and benchmarks
        (``bindir``: a server of your choice, e.g. one without pgvector)."""
        conf = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"} | pg_conf
        return cls(home, free_port(), free_port(), new_passwords(), conf, bindir=bindir)

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
            write_private(secret_file, new_jwt_secret() + "\n")
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
        if run_as() is not None:  # the server user must be able to pass through (not list) home
            self.home.chmod(self.home.stat().st_mode | 0o011)
        self.postgres = LocalPostgres(
            self.home / "postgres", self.pg_port, self.passwords[SUPERUSER], self.pg_conf, bindir=self.bindir
        )
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
