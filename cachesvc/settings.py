"""The one settings object, read once from ``CACHESVC_*`` environment variables.

``Settings`` holds the service's own settings and one group per part with settings of its
own (``database``, ``replica``, ``features``, ``semantic``, ``pgbouncer``, ``dev``, ``maintenance``); a
part's constructor takes its group only. Every setting is read from the variable it names
(``env_name``), so grouping changed no variable. ``docs/settings.md`` is rendered from the
same fields (cachesvc.settings_doc).

Every secret-bearing variable may instead be given as ``<NAME>_FILE`` (a path whose
contents, stripped, are the value), the way container orchestrators mount secrets.
Defaults are for the local development stack that ``scripts/dev`` starts, except the JWT
secret: there is none built in, so a service nobody configured accepts no token at all.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import Field, dataclass, field, fields
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


def _setting(default, *, secret: bool = False, help: str = "", env: str | None = None):
    """A setting: its default, whether it is secret, its help, and (in a group) its variable."""
    metadata = {"secret": secret, "help": help}
    if env is not None:
        metadata["env"] = PREFIX + env
    return field(default=default, metadata=metadata)


def _group(cls: type, title: str):
    return field(default_factory=cls, metadata={"group": title})


def env_name(f: Field) -> str:
    """The variable a setting is read from: a group's settings name theirs, the others are
    ``CACHESVC_`` and the field's name."""
    return f.metadata.get("env") or PREFIX + f.name.upper()


def _is_group(f: Field) -> bool:
    return "group" in f.metadata


@dataclass(frozen=True, slots=True)
class DatabaseSettings:
    """The primary: its DSNs, the service's pool, and the time every database call may take
    (cachesvc.db.pools, cachesvc.db.transaction)."""

    database_url: str = _setting(
        "postgresql://cachesvc_app@127.0.0.1:6432/cachesvc", secret=True, env="DATABASE_URL",
        help="service DSN, through PgBouncer (transaction mode)",
    )
    admin_database_url: str = _setting(
        "postgresql://cachesvc_admin@127.0.0.1:5432/cachesvc", secret=True, env="ADMIN_DATABASE_URL",
        help="direct DSN for migrations and maintenance (never through PgBouncer)",
    )
    monitor_database_url: str = _setting(
        "", secret=True, env="MONITOR_DATABASE_URL", help="optional DSN of a cache_monitor login (PgBouncer stats user)"
    )
    behind_pgbouncer: bool = _setting(
        True, env="BEHIND_PGBOUNCER", help="database_url goes through PgBouncer in transaction mode"
    )
    pool_size: int = _setting(10, env="POOL_SIZE", help="fixed size of the service's connection pool")
    read_lanes: int = _setting(
        2, env="READ_LANES",
        help="concurrent coalesced read transactions; reads queued meanwhile share one (0: one per request)",
    )
    pool_timeout_s: float = _setting(5.0, env="POOL_TIMEOUT_S", help="longest wait for a pooled connection")
    connect_timeout_s: int = _setting(5, env="CONNECT_TIMEOUT_S", help="TCP connect timeout to the database")
    request_timeout_s: float = _setting(
        6.0, env="REQUEST_TIMEOUT_S",
        help="longest a request waits on the database before 503 (covers PgBouncer's queue too)",
    )
    startup_attempts: int = _setting(
        6, env="STARTUP_ATTEMPTS", help="tries to reach the database at start-up (backoff 0.5 s doubling)"
    )
    statement_timeout_ms: int = _setting(5000, env="STATEMENT_TIMEOUT_MS", help="SET LOCAL statement_timeout per request")
    idle_in_transaction_timeout_ms: int = _setting(
        10000, env="IDLE_IN_TRANSACTION_TIMEOUT_MS", help="SET LOCAL idle_in_transaction_session_timeout per request"
    )

    def validate(self) -> None:
        if self.pool_size < 1:
            raise SettingsError(f"{PREFIX}POOL_SIZE must be at least 1")
        for name in ("database_url", "admin_database_url"):
            _check_dsn(f"{PREFIX}{name.upper()}", getattr(self, name))


@dataclass(frozen=True, slots=True)
class ReplicaSettings:
    """An optional hot standby that cache reads and feature lookups go to, within a lag bound
    (cachesvc.db.replica, cachesvc.db.routing; docs/scaling.md)."""

    url: str = _setting(
        "", secret=True, env="READ_DATABASE_URL",
        help="optional DSN of a hot standby of the primary, through its own PgBouncer: feature lookups and cache reads go there",
    )
    pool_size: int = _setting(10, env="READ_POOL_SIZE", help="fixed size of the read replica's connection pool")
    read_your_writes_s: float = _setting(
        2.0, env="READ_YOUR_WRITES_S",
        help="after a user's write through this process, their reads go to the primary for this long (>= CACHESVC_REPLICA_MAX_LAG_S)",
    )
    max_lag_s: float = _setting(
        1.0, env="REPLICA_MAX_LAG_S",
        help="a replica that may be further behind the primary than this is skipped (reads go to the primary)",
    )
    check_interval_s: float = _setting(
        0.25, env="REPLICA_CHECK_INTERVAL_S",
        help="how often the replica's replay position is compared with the primary's (<= half CACHESVC_REPLICA_MAX_LAG_S)",
    )
    timeout_s: float = _setting(
        1.0, env="REPLICA_TIMEOUT_S",
        help="longest a read waits on the replica (connection included) before it is run on the primary",
    )

    def validate(self) -> None:
        if self.url:
            _check_dsn(f"{PREFIX}READ_DATABASE_URL", self.url)
        if self.pool_size < 1:
            raise SettingsError(f"{PREFIX}READ_POOL_SIZE must be at least 1")
        if min(self.check_interval_s, self.timeout_s) <= 0:
            raise SettingsError(f"{PREFIX}REPLICA_CHECK_INTERVAL_S and {PREFIX}REPLICA_TIMEOUT_S must be positive")
        # Between two checks a caught-up replica's bound ages by an interval (and a check's time).
        if self.max_lag_s < 2 * self.check_interval_s:
            raise SettingsError(f"{PREFIX}REPLICA_MAX_LAG_S must be at least twice {PREFIX}REPLICA_CHECK_INTERVAL_S")
        # Past the window, a replica within the lag bound holds the write: that is the guarantee.
        if self.read_your_writes_s < self.max_lag_s:
            raise SettingsError(f"{PREFIX}READ_YOUR_WRITES_S must be at least {PREFIX}REPLICA_MAX_LAG_S")


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    """The feature read path: which tables, how they are read, warm-up and readiness
    (cachesvc.features; docs/features.md)."""

    schema: str = _setting("features", env="FEATURES_SCHEMA", help="schema whose tables are the feature tables")
    tables: str = _setting(
        "", env="FEATURES_TABLES", help="comma-separated allow-list of feature tables (empty: every table of the schema)"
    )
    strategy: str = _setting(
        "statement", env="FEATURES_STRATEGY",
        help="statement (one statement, a scalar subquery per table) or pipeline (one statement per table); either way one round trip",
    )
    open_to_users: bool = _setting(
        False, env="FEATURES_OPEN_TO_USERS", help="let user tokens read features (by default only service_role tokens may)"
    )
    read_lanes: int = _setting(
        2, env="FEATURES_READ_LANES",
        help="concurrent coalesced lookup transactions; lookups of the same tables queued meanwhile share one (0: one per request)",
    )
    l1_max_age_ms: float = _setting(
        0.0, env="FEATURES_L1_MAX_AGE_MS",
        help="keep feature rows in the service's memory for at most this long (0: off); a replaced table is seen at once, a row changed in place within this bound (docs/features.md)",
    )
    l1_max_mb: float = _setting(
        64.0, env="FEATURES_L1_MAX_MB", help="memory for feature rows kept by the L1 (their JSON and per-row overhead), the oldest dropped first",
    )
    warmup: bool = _setting(True, env="FEATURES_WARMUP", help="warm the feature tables up before /readyz turns ready")
    warmup_wait_s: float = _setting(
        10.0, env="FEATURES_WARMUP_WAIT_S",
        help="how long start-up waits for warm-up before it starts answering (/readyz is 503 until warm)",
    )
    warmup_hot_keys: int = _setting(
        1000, env="FEATURES_WARMUP_HOT_KEYS", help="how many recorded hot keys warm-up looks up"
    )
    warmup_lookups: int = _setting(
        200, env="FEATURES_WARMUP_LOOKUPS", help="how many synthetic lookups of sampled keys warm-up runs"
    )
    prewarm_fraction: float = _setting(
        0.5, env="FEATURES_PREWARM_FRACTION",
        help="share of shared_buffers that pg_prewarm may fill with feature indexes and tables",
    )
    restart_check_s: float = _setting(
        0.25, env="FEATURES_RESTART_CHECK_S",
        help="how often to look whether a transaction saw PostgreSQL restarted, to warm the feature tables up again (0: never)",
    )
    ready_hit_ratio: float = _setting(
        0.9, env="FEATURES_READY_HIT_RATIO",
        help="readiness: least buffer hit ratio of a probe lookup of random keys (0 disables)",
    )
    ready_latency_ms: float = _setting(
        25.0, env="FEATURES_READY_LATENCY_MS", help="readiness: longest time of a probe lookup over every table (0 disables)"
    )

    def validate(self) -> None:
        if not self.schema.strip():
            raise SettingsError(f"{PREFIX}FEATURES_SCHEMA must name a schema")
        if self.strategy not in ("statement", "pipeline"):
            raise SettingsError(f"{PREFIX}FEATURES_STRATEGY must be statement or pipeline")
        if not 0 <= self.ready_hit_ratio <= 1:
            raise SettingsError(f"{PREFIX}FEATURES_READY_HIT_RATIO must be between 0 and 1")
        if not 0 <= self.prewarm_fraction <= 1:
            raise SettingsError(f"{PREFIX}FEATURES_PREWARM_FRACTION must be between 0 and 1")
        if min(self.warmup_hot_keys, self.warmup_lookups) < 0 or self.ready_latency_ms < 0:
            raise SettingsError(f"{PREFIX}FEATURES_WARMUP_* and {PREFIX}FEATURES_READY_LATENCY_MS must not be negative")
        if self.read_lanes < 0:
            raise SettingsError(f"{PREFIX}FEATURES_READ_LANES must not be negative")
        if self.l1_max_age_ms < 0 or self.l1_max_mb <= 0:
            raise SettingsError(f"{PREFIX}FEATURES_L1_MAX_AGE_MS must not be negative and {PREFIX}FEATURES_L1_MAX_MB must be positive")
        if self.restart_check_s < 0:
            raise SettingsError(f"{PREFIX}FEATURES_RESTART_CHECK_S must not be negative")


# Cosine distance runs from 0 (same direction) to 2 (opposite).
MAX_COSINE_DISTANCE = 2.0
# pgvector's `vector` holds at most 16,000 dimensions.
MAX_EMBEDDING_DIM = 16_000
MAX_SIMILARITY_CANDIDATES = 10_000


@dataclass(frozen=True, slots=True)
class SemanticSettings:
    """The semantic cache: embeddings stored with entries, and the similarity search over a
    user's own entries (cachesvc.cache.store; docs/semantic.md)."""

    embedding_dim: int = _setting(
        1536, env="EMBEDDING_DIM", help="numbers in every embedding (PUT and POST …/similar); others are a 400"
    )
    max_distance: float = _setting(
        0.1, env="SIMILARITY_MAX_DISTANCE",
        help="default maxDistance of POST /v1/cache/{contentType}/similar: the largest cosine distance (0-2) that is a match",
    )
    candidates: int = _setting(
        40, env="SIMILARITY_CANDIDATES",
        help="entries a similarity search compares exactly, chosen first by their sign bits (Hamming distance);"
        " 0 compares every entry of the user (exact, slower past a few hundred entries per user)",
    )

    def validate(self) -> None:
        if not 1 <= self.embedding_dim <= MAX_EMBEDDING_DIM:
            raise SettingsError(f"{PREFIX}EMBEDDING_DIM must be between 1 and {MAX_EMBEDDING_DIM}")
        if not 0 <= self.max_distance <= MAX_COSINE_DISTANCE:
            raise SettingsError(f"{PREFIX}SIMILARITY_MAX_DISTANCE must be between 0 and {MAX_COSINE_DISTANCE:g}")
        if not 0 <= self.candidates <= MAX_SIMILARITY_CANDIDATES:
            raise SettingsError(f"{PREFIX}SIMILARITY_CANDIDATES must be between 0 and {MAX_SIMILARITY_CANDIDATES}")


@dataclass(frozen=True, slots=True)
class PgBouncerSettings:
    """What ``cachesvc pgbouncer-config`` renders into pgbouncer.ini (cachesvc.pgbouncer)."""

    listen_addr: str = _setting("127.0.0.1", env="PGBOUNCER_LISTEN_ADDR", help="PgBouncer listen_addr")
    pool_size: int = _setting(20, env="PGBOUNCER_POOL_SIZE", help="PgBouncer default_pool_size")
    max_client_conn: int = _setting(500, env="PGBOUNCER_MAX_CLIENT_CONN", help="PgBouncer max_client_conn")
    admin_users: str = _setting("", env="PGBOUNCER_ADMIN_USERS", help="PgBouncer admin_users (comma separated)")

    def validate(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class DevSettings:
    """The embedded local stack of ``scripts/dev`` (cachesvc.localstack)."""

    home: Path = _setting(Path(".cachesvc"), env="HOME", help="directory of the embedded local stack")
    pg_port: int = _setting(55432, env="DEV_PG_PORT", help="scripts/dev: port of the embedded PostgreSQL")
    pgbouncer_port: int = _setting(56432, env="DEV_PGBOUNCER_PORT", help="scripts/dev: port of the embedded PgBouncer")

    def validate(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class MaintenanceSettings:
    """Defaults of the maintenance commands (cachesvc.maintenance)."""

    partitions_ahead: int = _setting(3, env="PARTITIONS_AHEAD", help="months of partitions kept ahead of now")
    audit_retention_months: int = _setting(
        3, env="AUDIT_RETENTION_MONTHS", help="whole audit months kept in the database before archiving"
    )
    archive_dir: Path = _setting(
        Path("audit-archive"), env="ARCHIVE_DIR", help="where `audit archive` writes months (default --dest)"
    )

    def validate(self) -> None:
        if self.partitions_ahead < 0 or self.audit_retention_months < 0:
            raise SettingsError(f"{PREFIX}PARTITIONS_AHEAD and {PREFIX}AUDIT_RETENTION_MONTHS must not be negative")


@dataclass(frozen=True, slots=True)
class Settings:
    """The service's own settings, and one group per part that has settings of its own: each
    part's constructor takes its group only."""

    env: str = _setting("development", help="development or production (a label: both need a configured JWT secret)")
    host: str = _setting("127.0.0.1", help="address the HTTP service binds")
    port: int = _setting(8080, help="port the HTTP service binds")
    workers: int = _setting(1, help="server processes (each with its own pool of CACHESVC_POOL_SIZE)")
    shutdown_grace_s: int = _setting(10, help="on SIGTERM, how long in-flight requests may finish")

    jwt_secret: str = _setting(
        "", secret=True, help="HS256 secret for JWTs, at least 32 bytes; required by serve and token (none is built in)"
    )
    jwt_audience: str = _setting("authenticated", help="required 'aud' claim")

    default_ttl_s: int = _setting(7 * 86400, help="TTL of an entry stored without ttlSeconds")
    max_ttl_s: int = _setting(90 * 86400, help="largest ttlSeconds accepted")
    max_body_bytes: int = _setting(1 << 20, help="largest request body accepted (413 beyond)")
    lease_max_wait_ms: int = _setting(
        10_000, help="longest a lease request (POST /v1/leases/…) waits for another caller's generation; its waitMs is capped to this"
    )
    flush_interval_s: float = _setting(2.0, help="how often in-memory hit counters and feature hot keys are flushed")
    rate_limit_per_s: float = _setting(100.0, help="per-user token bucket refill rate (0 disables rate limiting)")
    rate_limit_burst: int = _setting(200, help="per-user token bucket size")

    log_format: str = _setting("auto", help="json, text, or auto (json unless stderr is a terminal)")
    log_level: str = _setting("INFO", help="logging level")
    access_log: bool = _setting(True, help="one log line per request (id, route, status, latency, hashed user)")

    database: DatabaseSettings = _group(DatabaseSettings, "database")
    replica: ReplicaSettings = _group(ReplicaSettings, "read replica")
    features: FeatureSettings = _group(FeatureSettings, "feature read path")
    semantic: SemanticSettings = _group(SemanticSettings, "semantic cache")
    pgbouncer: PgBouncerSettings = _group(PgBouncerSettings, "PgBouncer")
    dev: DevSettings = _group(DevSettings, "local stack")
    maintenance: MaintenanceSettings = _group(MaintenanceSettings, "maintenance")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        settings = _read(cls, environ)
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.env not in ("development", "production"):
            raise SettingsError(f"{PREFIX}ENV must be 'development' or 'production', not {self.env!r}")
        if self.jwt_secret:
            _check_jwt_secret(self.jwt_secret)
        if not 1 <= self.default_ttl_s <= self.max_ttl_s:
            raise SettingsError(f"{PREFIX}DEFAULT_TTL_S must be between 1 and {PREFIX}MAX_TTL_S")
        if self.max_body_bytes < 1024:
            raise SettingsError(f"{PREFIX}MAX_BODY_BYTES must be at least 1024")
        if not 0 <= self.lease_max_wait_ms <= 20_000:
            raise SettingsError(f"{PREFIX}LEASE_MAX_WAIT_MS must be between 0 and 20000")
        if self.flush_interval_s <= 0:
            raise SettingsError(f"{PREFIX}FLUSH_INTERVAL_S must be positive")
        if self.log_format not in ("auto", "json", "text"):
            raise SettingsError(f"{PREFIX}LOG_FORMAT must be auto, json or text")
        for f in fields(self):
            if _is_group(f):
                getattr(self, f.name).validate()

    def require_jwt_secret(self) -> str:
        """The secret tokens are signed with, for whatever verifies or mints them."""
        if not self.jwt_secret:
            raise SettingsError(
                f"no JWT secret configured: set {PREFIX}JWT_SECRET or {PREFIX}JWT_SECRET_FILE "
                f"(the HS256 secret your tokens are signed with, at least {MIN_JWT_SECRET_BYTES} bytes)"
            )
        return self.jwt_secret

    def describe(self) -> dict[str, str]:
        """Every setting by its variable, secrets masked, for logs and ``cachesvc settings``."""
        out = {}
        for group, f in walk(type(self)):
            value = str(getattr(getattr(self, group) if group else self, f.name))
            out[env_name(f)] = _mask(value) if f.metadata.get("secret") else value
        return out


def walk(cls: type = Settings) -> Iterator[tuple[str | None, Field]]:
    """Every setting as (its group's field name, or None at the top; the setting's field)."""
    for f in fields(cls):
        if _is_group(f):
            yield from ((f.name, inner) for inner in fields(f.default_factory))
        else:
            yield None, f


def _read(cls: type, environ: Mapping[str, str]):
    values = {}
    for f in fields(cls):
        if _is_group(f):
            values[f.name] = _read(f.default_factory, environ)
        elif (raw := _lookup(environ, env_name(f))) is not None:
            values[f.name] = _convert(env_name(f), f.type, raw)
    return cls(**values)


def _check_dsn(name: str, url: str) -> None:
    if urlsplit(url).scheme not in ("postgresql", "postgres"):
        raise SettingsError(f"{name} must be a postgresql:// URL")


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


def _convert(env_name: str, type_: str, raw: str):
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
