"""The embedded local stack: a PostgreSQL cluster of our own plus PgBouncer in front of it.

Optionally (``LocalStack.start_standby()``) a hot standby of that cluster, made with
``pg_basebackup -R`` and kept current by streaming replication, with a PgBouncer of its own:
the read replica of the Scaling section, for tests and benchmarks.

One implementation shared by ``scripts/dev`` (a persistent cluster under ``$CACHESVC_HOME``),
the test suite and the benchmarks (throwaway clusters on free ports). It only ever starts,
and stops, servers it started itself: an occupied data directory or port is an error, never
something to take over.

| module | what |
| --- | --- |
| ``processes`` | free ports, the OS user servers run as (root: ``postgres``), spawn and stop |
| ``postgres`` | one cluster: initdb, start, wait ready, stop |
| ``pgbouncer`` | PgBouncer from the files ``cachesvc pgbouncer config`` renders |
| ``standby`` | a hot standby: ``pg_basebackup -R`` and streaming replication |
| ``stack`` | ``LocalStack``: the above put together, migrated, with login users; ``env()`` |
| ``service`` | ``ServiceProcess``: ``cachesvc serve`` in a subprocess against a stack |
"""

from cachesvc.localstack.pgbouncer import LocalPgBouncer, find_pgbouncer
from cachesvc.localstack.postgres import MIN_PG_MAJOR, SUPERUSER, LocalPostgres, find_pg_bindir
from cachesvc.localstack.processes import SERVICE_OS_USER, StackError, free_port, port_in_use
from cachesvc.localstack.service import ServiceProcess
from cachesvc.localstack.stack import (
    DATABASE,
    JWT_SECRET_FILE,
    LOGINS,
    LocalStack,
    new_jwt_secret,
    new_passwords,
)
from cachesvc.localstack.standby import REPLICATOR, LocalStandby, base_backup

__all__ = [
    "DATABASE",
    "JWT_SECRET_FILE",
    "LOGINS",
    "MIN_PG_MAJOR",
    "REPLICATOR",
    "SERVICE_OS_USER",
    "SUPERUSER",
    "LocalPgBouncer",
    "LocalPostgres",
    "LocalStack",
    "LocalStandby",
    "ServiceProcess",
    "StackError",
    "base_backup",
    "find_pg_bindir",
    "find_pgbouncer",
    "free_port",
    "new_jwt_secret",
    "new_passwords",
    "port_in_use",
]
