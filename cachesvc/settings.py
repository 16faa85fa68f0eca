"""The one settings object, read once from ``CACHESVC_*`` environment variables.

Every secret-bearing variable may instead be given as ``<NAME>_FILE`` (a path whose
contents, stripped, are the value), the way container orchestrators mount secrets.
Defaults are for the local development stack that ``scripts/dev`` starts, except the JWT
secret: there is none built in, so a service nobody configured accepts no token at all.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from urllib.parse import urlsplit

PREFIX = "CACHESVC_"

# RFC 7518 section 3.2: an HS256 key is at least as long as the hash output, 256 bits.
MIN_JWT_SECRET_BYTES = 32

# SHA-256 of JWT secrets that are public: this project's former built-in development secret,
# and the Supabase CLI's local default and self-hosting example. Anyone can sign with them.
PUBLISHED_JWT_SECRETS_SHA256 = frozenset({
    "301fc0d5af9f486e18c4638f919dc0835b8223d9a0fc62e27b4e6c5e445ed167",
    "a064b502e61d27e94b8717290e5e1b32e36720e9fbdf952ec81a84c07128cb37",
    "1453cea2dc3799e9026e42b3e465e455256d5a149582e4c5b92d4c8d604731a2",
})


class SettingsError(ValueError):
    """A CACHESVC_* variable has a value the service cannot use."""


def _setting(default, *, secret: bool = False, help: str = ""):
    return field(default=default, metadata={"secret": secret, "help": help})


@dataclass(frozen=True, slots=True)
class Settings:
    env: str = _setting("development", help="development or production (a label: both need a configured JWT secret)")
    home: Path = _setting(Path(".cachesvc"), help="directory of the embedded local stack")
    host: str = _setting("127.0.0.1", help="address the HTTP service binds")
    port: int = _setting(8080, help="port the HTTP service binds")
    workers: int = _setting(1, help="server processes (each with its own pool of CACHESVC_POOL_SIZE)")

    database_url: str = _setting(
        "postgresql://cachesvc_app@127.0.0.1:6432/cachesvc",
        secret=True,
        help="service DSN, through PgBouncer (transaction mode)",
    )
    admin_database_url: str = _setting(
        "postgresql://cachesvc_admin@127.0.0.1:5432/cachesvc",
        secret=True,
        help="direct DSN for migrations and maintenance (never through PgBouncer)",
    )
    monitor_database_url: str = _setting(
        "", secret=True, help="optional DSN of a cache_monitor login (PgBouncer stats user)"
    )
    behind_pgbouncer: bool = _setting(
        True, help="database_url goes through PgBouncer in transaction mode"
    )

    pool_size: int = _setting(10, help="fixed size of the service's connection pool")

    # -- read replica (cachesvc.db.replica, cachesvc.db.routing; docs/scaling.md) --
    read_database_url: str = _setting(
        "", secret=True,
        help="optional DSN of a hot standby of the primary, through its own PgBouncer: feature lookups and cache reads go there",
    )
    read_pool_size: int = _setting(10, help="fixed size of the read replica's connection pool")
    read_your_writes_s: float = _setting(
        2.0, help="after a user's write through this process, their reads go to the primary for this long (>= CACHESVC_REPLICA_MAX_LAG_S)"
    )
    replica_max_lag_s: float = _setting(
        1.0, help="a replica that may be further behind the primary than this is skipped (reads go to the primary)"
    )
    replica_check_interval_s: float = _setting(
        0.25, help="how often the replica's replay position is compared with the primary's (<= half CACHESVC_REPLICA_MAX_LAG_S)"
    )
    replica_timeout_s: float = _setting(
        1.0, help="longest a read waits on the replica (connection included) before it is run on the primary"
    )
    read_lanes: int = _setting(
        2, help="concurrent coalesced read transactions; reads queued meanwhile share one (0: one per request)"
    )
    pool_timeout_s: float = _setting(5.0, help="longest wait for a pooled connection")
    connect_timeout_s: int = _setting(5, help="TCP connect timeout to the database")
    request_timeout_s: float = _setting(
        6.0, help="longest a request waits on the database before 503 (covers PgBouncer's queue too)"
    )
    startup_attempts: int = _setting(6, help="tries to reach the database at start-up (backoff 0.5 s doubling)")
    statement_timeout_ms: int = _setting(5000, help="SET LOCAL statement_timeout per request")
    idle_in_transaction_timeout_ms: int = _setting(
        10000, help="SET LOCAL idle_in_transaction_session_timeout per request"
    )

    jwt_secret: str = _setting(
        "", secret=True, help="HS256 secret for JWTs, at least 32 bytes; required by serve and token (none is built in)"
    )
    jwt_audience: str = _setting("authenticated", help="required 'aud' claim")

    default_ttl_s: int = _setting(7 * 86400, help="TTL of an entry stored without ttlSeconds")
    max_ttl_s: int = _setting(90 * 86400, help="largest ttlSeconds accepted")
    max_body_bytes: int = _setting(1 << 20, help="largest request body accepted (413 beyond)")
    flush_interval_s: float = _setting(2.0, help="how often in-memory hit counters are flushed")
    rate_limit_per_s: float = _setting(100.0, help="per-user token bucket refill rate (0 disables rate limiting)")
    rate_limit_burst: int = _setting(200, help="per-user token bucket size")
    shutdown_grace_s: int = _setting(10, help="on SIGTERM, how long in-flight requests may finish")

    pgbouncer_listen_addr: str = _setting("127.0.0.1", help="PgBouncer listen_addr")
    pgbouncer_pool_size: int = _setting(20, help="PgBouncer default_pool_size")
    pgbouncer_max_client_conn: int = _setting(500, help="PgBouncer max_client_conn")
    pgbouncer_admin_users: str = _setting("", help="PgBouncer admin_users (comma separated)")

    dev_pg_port: int = _setting(55432, help="scripts/dev: port of the embedded PostgreSQL")
    dev_pgbouncer_port: int = _setting(56432, help="scripts/dev: port of the embedded PgBouncer")

    partitions_ahead: int = _setting(3, help="months of partitions kept ahead of now")
    audit_retention_months: int = _setting(3, help="whole audit months kept in the database before archiving")
    archive_dir: Path = _setting(Path("audit-archive"), help="where `audit archive` writes months (default --dest)")
    log_format: str = _setting("auto", help="json, text, or auto (json unless stderr is a terminal)")
    log_level: str = _setting("INFO", help="logging level")
    access_log: bool = _setting(True, help="one log line per request (id, route, status, latency, hashed user)")

    # -- feature read path (cachesvc.features) --
    features_schema: str = _setting("features", help="schema whose tables are the feature tables")
    features_tables: str = _setting(
        "", help="comma-separated allow-list of feature tables (empty: every table of the schema)"
    )
    features_strategy: str = _setting(
        "statement", help="statement (one statement, a scalar subquery per table) or pipeline (one statement per table); either way one round trip"
    )
    features_open_to_users: bool = _setting(
        False, help="let user tokens read features (by default only service_role tokens may)"
    )
    features_warmup: bool = _setting(True, help="warm the feature tables up before /readyz turns ready")
    features_warmup_wait_s: float = _setting(
        10.0, help="how long start-up waits for warm-up before it starts answering (/readyz is 503 until warm)"
    )
    features_warmup_hot_keys: int = _setting(1000, help="how many recorded hot keys warm-up looks up")
    features_warmup_lookups: int = _setting(200, help="how many synthetic lookups of sampled keys warm-up runs")
    features_prewarm_fraction: float = _setting(
        0.5, help="share of shared_buffers that pg_prewarm may fill with feature indexes and tables"
    )
    features_ready_hit_ratio: float = _setting(
        0.9, help="readiness: least buffer hit ratio of a probe lookup of random keys (0 disables)"
    )
    features_ready_latency_ms: float = _setting(
        25.0, help="readiness: longest time of a probe lookup over every table (0 disables)"
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        values = {}
        for f in fields(cls):
            raw = _lookup(environ, PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _convert(f.name, f.type, raw)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.env not in ("development", "production"):
            raise SettingsError(f"{PREFIX}ENV must be 'development' or 'production', not {self.env!r}")
        if self.jwt_secret:
            _check_jwt_secret(self.jwt_secret)
        if self.pool_size < 1:
            raise SettingsError(f"{PREFIX}POOL_SIZE must be at least 1")
        if not 1 <= self.default_ttl_s <= self.max_ttl_s:
            raise SettingsError(f"{PREFIX}DEFAULT_TTL_S must be between 1 and {PREFIX}MAX_TTL_S")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"{PREFIX}MAX_BODY_BYTES must be at least 1024")
        if self.flush_interval_s <= 0:
            raise SettingsError(f"{PREFIX}FLUSH_INTERVAL_S must be positive")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError(f"{PREFIX}LOG_FORMAT must be auto, json or text")
        if not self.features_schema.strip():
            raise SettingsError(f"{PREFIX}FEATURES_SCHEMA must name a schema")
        if self.features_strategy not in ("statement", "pipeline"):
            raise SettingsError(f"{PREFIX}FEATURES_STRATEGY must be statement or pipeline")
        if not 0 <= self.features_ready_hit_ratio <= 1:
            raise SettingsError(f"{PREFIX}FEATURES_READY_HIT_RATIO must be between 0 and 1")
        if not 0 <= self.features_prewarm_fraction <= 1:
            raise SettingsError(f"{PREFIX}FEATURES_PREWARM_FRACTION must be between 0 and 1")
        if min(self.features_warmup_hot_keys, self.features_warmup_lookups) < 0 or self.features_ready_latency_ms < 0:
            raise SettingsError(f"{PREFIX}FEATURES_WARMUP_* and {PREFIX}FEATURES_READY_LATENCY_MS must not be negative")
        for name in ("database_url", "admin_database_url") + (("read_database_url",) if self.read_database_url else ()):
            scheme = urlsplit(getattr(self, name)).scheme
            if scheme not in ("postgresql", "postgres"):
                raise SettingsError(f"{PREFIX}{name.upper()} must be a postgresql:// URL")
        self._validate_replica()

    def _validate_replica(self) -> None:
        if self.read_pool_size < 1:
            raise SettingsError(f"{PREFIX}READ_POOL_SIZE must be at least 1")
        if min(self.replica_check_interval_s, self.replica_timeout_s) <= 0:
            raise SettingsError(f"{PREFIX}REPLICA_CHECK_INTERVAL_S and {PREFIX}REPLICA_TIMEOUT_S must be positive")
        # Between two checks a caught-up replica's bound ages by an interval (and a check's time).
        if self.replica_max_lag_s < 2 * self.replica_check_interval_s:
            raise SettingsError(f"{PREFIX}REPLICA_MAX_LAG_S must be at least twice {PREFIX}REPLICA_CHECK_INTERVAL_S")
        # Past the window, a replica within the lag bound holds the write: that is the guarantee.
        if self.read_your_writes_s < self.replica_max_lag_s:
            raise SettingsError(f"{PREFIX}READ_YOUR_WRITES_S must be at least {PREFIX}REPLICA_MAX_LAG_S")

    def require_jwt_secret(self) -> str:
        """The secret tokens are signed with, for whatever verifies or mints them."""
        if not self.jwt_secret:
            raise SettingsError(
                f"no JWT secret configured: set {PREFIX}JWT_SECRET or {PREFIX}JWT_SECRET_FILE "
                f"(the HS256 secret your tokens are signed with, at least {MIN_JWT_SECRET_BYTES} bytes)"
            )
        return self.jwt_secret

    def describe(self) -> dict[str, str]:
        """Every setting with secrets masked, for logs and ``cachesvc settings``."""
        out = {}
        for f in fields(self):
            value = str(getattr(self, f.name))
            out[PREFIX + f.name.upper()] = _mask(value) if f.metadata.get("secret") else value
        return out


def _check_jwt_secret(secret: str) -> None:
    if len(secret.encode()) < MIN_JWT_SECRET_BYTES:
        raise SettingsError(
            f"{PREFIX}JWT_SECRET is {len(secret.encode())} bytes; HS256 needs at least {MIN_JWT_SECRET_BYTES} (256 bits)"
        )
    if hashlib.sha256(secret.encode()).hexdigest() in PUBLISHED_JWT_SECRETS_SHA256:
        raise SettingsError(f"{PREFIX}JWT_SECRET is a published example secret that anyone can sign with; generate your own")


def _lookup(environ: Mapping[str, str], name: str) -> str | None:
    if name in environ:
        return environ[name]
    path = environ.get(name + "_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise SettingsError(f"{name}_FILE={path}: {exc.strerror}") from None
    return None


def _convert(name: str, type_: str, raw: str):
    env_name = PREFIX + name.upper()
    try:
        if type_ == "int":
            return int(raw)
        if type_ == "float":
            return float(raw)
        if type_ == "bool":
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_ == "Path":
            return Path(raw)
        return raw
    except ValueError:
        raise SettingsError(f"{env_name}={raw!r} is not a valid {type_}") from None


def _mask(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme.startswith("postgres") and parts.password:
        return value.replace(":" + parts.password + "@", ":***@", 1)
    if parts.scheme:
        return value
    return "***" if value else ""
