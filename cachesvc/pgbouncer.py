"""Render ``pgbouncer.ini`` and its auth file from settings (``cachesvc pgbouncer config``).

PgBouncer comes from the OS packages; this module only writes its configuration. The
service's DSN (``CACHESVC_DATABASE_URL``) names PgBouncer's address, port, database and the
application login; the admin DSN names the PostgreSQL server behind it. Pool mode is always
``transaction``: the service keeps every request in one explicit transaction and sets the
user identity transaction-locally, which is what makes that mode safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cachesvc.settings import Settings


@dataclass(frozen=True, slots=True)
class Login:
    user: str
    password: str


@dataclass(frozen=True, slots=True)
class PgBouncerConfig:
    listen_addr: str
    listen_port: int
    database: str
    server_host: str
    server_port: int
    server_dbname: str
    logins: tuple[Login, ...]
    stats_users: tuple[str, ...] = ()
    admin_users: tuple[str, ...] = ()
    default_pool_size: int = 20
    max_client_conn: int = 500
    reserve_pool_size: int = 5
    directory: Path = field(default=Path("."))

    @property
    def ini_path(self) -> Path:
        return self.directory / "pgbouncer.ini"

    @property
    def auth_path(self) -> Path:
        return self.directory / "userlist.txt"


def _dsn_parts(url: str) -> tuple[str, int, str, Login | None]:
    parts = urlsplit(url)
    login = None
    if parts.username:
        login = Login(unquote(parts.username), unquote(parts.password or ""))
    return parts.hostname or "127.0.0.1", parts.port or 5432, parts.path.lstrip("/") or "postgres", login


def config_from_settings(settings: Settings, directory: Path) -> PgBouncerConfig:
    """PgBouncer listens where the service's DSN points and forwards to the admin DSN's server."""
    _, listen_port, database, app_login = _dsn_parts(settings.database.database_url)
    server_host, server_port, server_dbname, _ = _dsn_parts(settings.database.admin_database_url)
    logins = [app_login] if app_login else []
    stats_users: list[str] = []
    if settings.database.monitor_database_url:
        _, _, _, monitor = _dsn_parts(settings.database.monitor_database_url)
        if monitor:
            logins.append(monitor)
            stats_users.append(monitor.user)
    if not logins:
        raise ValueError("CACHESVC_DATABASE_URL names no user: PgBouncer needs the application login")
    admin_users = tuple(u.strip() for u in settings.pgbouncer.admin_users.split(",") if u.strip())
    return PgBouncerConfig(
        listen_addr=settings.pgbouncer.listen_addr,
        listen_port=listen_port,
        database=database,
        server_host=server_host,
        server_port=server_port,
        server_dbname=server_dbname,
        logins=tuple(logins),
        stats_users=tuple(stats_users),
        admin_users=admin_users,
        default_pool_size=settings.pgbouncer.pool_size,
        max_client_conn=settings.pgbouncer.max_client_conn,
        directory=directory.resolve(),
    )


def render_ini(cfg: PgBouncerConfig) -> str:
    def users(names: tuple[str, ...]) -> str:
        return ", ".join(names)

    return f"""\
;; Rendered by `cachesvc pgbouncer config`; edit the CACHESVC_* settings, not this file.
[databases]
{cfg.database} = host={cfg.server_host} port={cfg.server_port} dbname={cfg.server_dbname}

[pgbouncer]
listen_addr = {cfg.listen_addr}
listen_port = {cfg.listen_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {cfg.auth_path}
admin_users = {users(cfg.admin_users)}
stats_users = {users(cfg.stats_users)}

;; The service runs every request in one explicit transaction and sets the user
;; transaction-locally, so transaction pooling is safe and lets many clients share a
;; few server connections. Prepared statements stay off on the client side.
pool_mode = transaction
default_pool_size = {cfg.default_pool_size}
reserve_pool_size = {cfg.reserve_pool_size}
reserve_pool_timeout = 2
max_client_conn = {cfg.max_client_conn}
server_reset_query =
server_check_delay = 10
server_lifetime = 3600
server_idle_timeout = 300
server_connect_timeout = 5
;; After a failed login to the server (it was down), PgBouncer turns clients away at once
;; until its next login succeeds, which it tries no sooner than this: after a restart the
;; service sends such a request again for up to 1.5 s (cachesvc.db.transaction), so keep it short.
server_login_retry = 0.25
;; A client waits at most this long for a server connection, then gets an error: a
;; bounded wait that the service turns into 503 rather than a hang.
query_wait_timeout = 10
client_login_timeout = 10
idle_transaction_timeout = 30
tcp_keepalive = 1
tcp_keepidle = 30
tcp_keepintvl = 10
tcp_keepcnt = 3
;; psycopg sends none of these, but other tools (psql, JDBC) do.
ignore_startup_parameters = extra_float_digits
logfile = {cfg.directory / "pgbouncer.log"}
pidfile = {cfg.directory / "pgbouncer.pid"}
log_connections = 0
log_disconnections = 0
"""


def render_auth_file(cfg: PgBouncerConfig) -> str:
    def quote(value: str) -> str:
        return '"' + value.replace('"', '""') + '"'

    return "".join(f"{quote(login.user)} {quote(login.password)}\n" for login in cfg.logins)


def write(cfg: PgBouncerConfig) -> list[Path]:
    """Write both files (the auth file readable by its owner only); returns their paths."""
    cfg.directory.mkdir(parents=True, exist_ok=True)
    cfg.ini_path.write_text(render_ini(cfg))
    cfg.auth_path.touch(mode=0o600, exist_ok=True)
    cfg.auth_path.chmod(0o600)
    cfg.auth_path.write_text(render_auth_file(cfg))
    return [cfg.ini_path, cfg.auth_path]
