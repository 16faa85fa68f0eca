"""The ``cachesvc`` command line.

Exit codes, JSON output and error printing: ``cachesvc.clikit`` (0 ok, 1 failure, 2 usage
error, 3 a check found problems). Machine-readable results go to stdout as JSON; progress and
errors go to stderr.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import sys
import uuid
from pathlib import Path

from cachesvc.clikit import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, error, print_json
from cachesvc.features import cli as features_cli
from cachesvc.maintenance import cli as maintenance_cli
from cachesvc.settings import Settings, SettingsError

# The user that the development token printed by `cachesvc dev` acts as.
DEV_USER_ID = "00000000-0000-4000-8000-000000000001"


# --- serve / dev -------------------------------------------------------------------------


def cmd_serve(args, settings: Settings) -> int:
    import uvicorn

    from cachesvc import api, logs

    logs.setup(settings.log_format, settings.log_level)
    app = api.create_app(settings)
    if settings.workers > 1:  # separate processes import the app and read the settings again
        app = "cachesvc.api:create_app"
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again with the handler it
    # found: with this one the process then ends with exit code 0 (a clean stop), not by SIGTERM.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    uvicorn.run(
        app,
        factory=settings.workers > 1,
        workers=settings.workers,
        host=args.host or settings.host,
        port=args.port or settings.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=settings.shutdown_grace_s,
    )
    return EXIT_OK


def cmd_dev(args, settings: Settings) -> int:
    from cachesvc import auth, localstack

    home = settings.dev.home.resolve()
    stack = localstack.LocalStack.persistent(home, settings.dev.pg_port, settings.dev.pgbouncer_port)

    def on_term(signum, frame):  # before uvicorn takes over the signals: stop what we started
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        stack.start(log=lambda msg: error(msg))
        if args.standby:  # a fresh copy each start: the dev database is small
            shutil.rmtree(home / "standby", ignore_errors=True)
            stack.start_standby(log=lambda msg: error(msg))
        feature_tables = features_cli.dev_demo(stack.url(localstack.SUPERUSER), settings.features.schema, error)
        secret = settings.jwt_secret or stack.jwt_secret  # a configured one, else this home's random one
        env = stack.env() | {
            "CACHESVC_HOME": str(home),
            "CACHESVC_JWT_SECRET": secret,
            "CACHESVC_PORT": str(settings.port),
        }
        os.environ.update(env)
        dev_settings = Settings.from_env()
        _write_env_file(home / "env", env, stack)
        user_token = auth.mint(secret, sub=DEV_USER_ID, audience=settings.jwt_audience, ttl_seconds=7 * 86400)
        service_token = auth.mint(
            secret, sub="dev-service", role=auth.SERVICE_ROLE, audience=settings.jwt_audience, ttl_seconds=7 * 86400
        )
        url = f"http://{settings.host}:{settings.port}"
        sys.stderr.write(
            f"""
cachesvc development stack is up.
  service          {url}   (try: curl {url}/healthz)
  through PgBouncer {stack.url('cachesvc_app')}
  read replica     {stack.url('cachesvc_app', standby=True) if args.standby else '(none: scripts/dev --standby starts a hot standby)'}
  direct (admin)   {stack.url(localstack.SUPERUSER)}
  JWT secret       {secret}
                   (random, kept in {home / localstack.JWT_SECRET_FILE} unless CACHESVC_JWT_SECRET is set)
  user token       {user_token}
                   (sub {DEV_USER_ID}, valid 7 days)
  service token    {service_token}
  environment      source {home / 'env'}   (then cachesvc, psql and alembic use this stack)
Ctrl-C stops the service, PgBouncer and PostgreSQL; data is kept in {home}.

"""
        )
        sys.stderr.write(features_cli.dev_banner(url, service_token, feature_tables))
        args.host, args.port = settings.host, settings.port
        return cmd_serve(args, dev_settings)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        stack.stop()


def _write_env_file(path: Path, env: dict[str, str], stack) -> None:
    from cachesvc import localstack

    admin = {
        "PGHOST": "127.0.0.1",
        "PGPORT": str(stack.pg_port),
        "PGUSER": localstack.SUPERUSER,
        "PGPASSWORD": stack.passwords[localstack.SUPERUSER],
        "PGDATABASE": localstack.DATABASE,
    }
    lines = ["# Written by `cachesvc dev`: source it to point cachesvc, psql and alembic at the dev stack."]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in (env | admin).items()]
    path.touch(mode=0o600, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


# --- pgbouncer ---------------------------------------------------------------------------


def cmd_pgbouncer_config(args, settings: Settings) -> int:
    from cachesvc import pgbouncer

    cfg = pgbouncer.config_from_settings(settings, Path(args.out or "."))
    if args.out is None:
        sys.stdout.write(pgbouncer.render_ini(cfg))
        return EXIT_OK
    written = pgbouncer.write(cfg)
    print_json({"written": [str(p) for p in written], "listen": f"{cfg.listen_addr}:{cfg.listen_port}"})
    return EXIT_OK


# --- token, roles, db --------------------------------------------------------------------


def cmd_token(args, settings: Settings) -> int:
    from cachesvc import auth

    if args.role != auth.SERVICE_ROLE:
        try:
            uuid.UUID(args.sub)
        except ValueError:
            error(f"--sub must be a user uuid for role {args.role!r}")
            return EXIT_USAGE
    sys.stdout.write(
        auth.mint(settings.require_jwt_secret(), sub=args.sub, role=args.role, audience=settings.jwt_audience, ttl_seconds=args.ttl) + "\n"
    )
    return EXIT_OK


def cmd_roles_create_login(args, settings: Settings) -> int:
    import psycopg

    from cachesvc import roles

    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            error(f"environment variable {args.password_env} is not set")
            return EXIT_USAGE
    with psycopg.connect(settings.database.admin_database_url, autocommit=True) as conn:
        created = roles.create_login(conn, args.name, args.group, password)
    print_json({"login": args.name, "group": args.group, "created": created})
    return EXIT_OK


def cmd_db(args, settings: Settings) -> int:
    from cachesvc import migrations

    url = settings.database.admin_database_url
    if args.db_command == "upgrade":
        migrations.upgrade(url, args.revision)
    elif args.db_command == "downgrade":
        migrations.downgrade(url, args.revision)
    print_json({"head": migrations.head_revision(), "action": args.db_command})
    return EXIT_OK


def cmd_settings(args, settings: Settings) -> int:
    print_json(settings.describe())
    return EXIT_OK


# --- parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cachesvc", description="PostgreSQL-backed cache service")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the HTTP service")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("dev", help="start the embedded PostgreSQL + PgBouncer stack and the service")
    p.add_argument("--standby", action="store_true",
                   help="also a hot standby of it behind its own PgBouncer, as the service's read replica (docs/scaling.md)")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("pgbouncer", help="PgBouncer configuration")
    pg_sub = p.add_subparsers(dest="pgbouncer_command", required=True, metavar="SUBCOMMAND")
    c = pg_sub.add_parser("config", help="render pgbouncer.ini (stdout) or pgbouncer.ini + userlist.txt (--out DIR)")
    c.add_argument("--out", metavar="DIR", help="write pgbouncer.ini and userlist.txt (mode 600) into DIR")
    c.set_defaults(func=cmd_pgbouncer_config)

    p = sub.add_parser("token", help="mint an HS256 JWT with the configured secret (CACHESVC_JWT_SECRET; development)")
    p.add_argument("--sub", default=DEV_USER_ID, help="user uuid (any string for service_role)")
    p.add_argument("--role", default="authenticated", choices=["authenticated", "service_role"])
    p.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("roles", help="database login users")
    r_sub = p.add_subparsers(dest="roles_command", required=True, metavar="SUBCOMMAND")
    c = r_sub.add_parser("create-login", help="create or update a login that is a member of a group role")
    c.add_argument("name")
    c.add_argument("--group", required=True, choices=["cache_app", "cache_maintainer", "cache_monitor"])
    c.add_argument("--password-env", metavar="VAR", help="take the password from this environment variable")
    c.set_defaults(func=cmd_roles_create_login)

    p = sub.add_parser("db", help="schema migrations (direct connection: CACHESVC_ADMIN_DATABASE_URL)")
    d_sub = p.add_subparsers(dest="db_command", required=True, metavar="SUBCOMMAND")
    c = d_sub.add_parser("upgrade", help="migrate up (default: head)")
    c.add_argument("revision", nargs="?", default="head")
    c.set_defaults(func=cmd_db)
    c = d_sub.add_parser("downgrade", help="migrate down to a revision ('base' removes everything)")
    c.add_argument("revision")
    c.set_defaults(func=cmd_db)

    p = sub.add_parser("settings", help="print the effective settings (secrets masked)")
    p.set_defaults(func=cmd_settings)

    maintenance_cli.register(sub)
    features_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        error(str(exc))
        return EXIT_USAGE
    try:
        return args.func(args, settings)
    except KeyboardInterrupt:
        return EXIT_OK
    except SettingsError as exc:  # a setting this command needs (e.g. the JWT secret) is missing
        error(str(exc))
        return EXIT_USAGE
    except Exception as exc:
        from cachesvc.localstack import StackError

        if isinstance(exc, StackError | ConnectionError | OSError) or exc.__class__.__module__.startswith("psycopg"):
            error(str(exc))
            return EXIT_FAILURE
        raise
