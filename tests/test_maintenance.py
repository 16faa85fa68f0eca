"""Maintenance commands, run as a cache_maintainer login over a direct connection."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import pty
import random
import select
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
from psycopg import sql

from cachesvc.maintenance.partitions import add_months
from cachesvc.migrations import PROJECT_ROOT
from tests.harness import (acting_as, archived_rows, cli, connect, insert_entry, past_audit_rows, report, seed_audit_month,
                           this_month, utc, wait_until)

COMMANDS = {
    "partitions ensure": ["partitions", "ensure"],
    "partitions retire": ["partitions", "retire"],
    "cleanup": ["cleanup"],
    "audit archive": ["audit", "archive", "--before", "2000-01-01", "--dest", "{tmp}"],
    "verify": ["verify"],
    "health partitions": ["health", "partitions"],
}


# -- every command: lock, summary row, exit codes ----------------------------------------


@pytest.mark.parametrize("name", list(COMMANDS))
def test_second_concurrent_run_exits_zero_and_says_so(maint_env, stack, name, tmp_path):
    args = [a.format(tmp=tmp_path) for a in COMMANDS[name]]
    with connect(stack, "cachesvc_maintainer", direct=True, autocommit=True) as holder:
        key = f"cachesvc.maintenance.{name.split()[0]}"
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (key,))
        held = cli(maint_env, *args)
        holder.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (key,))
    assert held.returncode == 0
    assert report(held)["status"] == "already_running"
    free = cli(maint_env, *args)
    assert free.returncode in (0, 3), free.stdout + free.stderr  # 3: a check found problems
    assert report(free)["status"] in ("ok", "problems")


def test_two_cleanups_at_once_one_works_one_steps_aside(maint_env, admin):
    user = uuid.uuid4()
    admin.execute(
        "INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, created_at, expires_at)"
        " SELECT %s, 'chapter', 'x' || g, '{}', now() - interval '10 minutes', now() - interval '5 minutes'"
        " FROM generate_series(1, 6000) g",
        (user,),
    )
    procs = [
        subprocess.Popen([sys.executable, "-m", "cachesvc", "cleanup", "--batch-size", "200", "--pause", "0.02"],
                         env=maint_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    statuses = sorted(json.loads(out)["status"] for out, _ in outputs)
    assert statuses == ["already_running", "ok"], outputs
    assert admin.execute("SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)).fetchone() == (0,)


def test_every_run_leaves_a_summary_row(maint_env, admin):
    before = admin.execute("SELECT coalesce(max(id), 0) FROM cache_audit_log").fetchone()[0]
    assert cli(maint_env, "partitions", "ensure").returncode == 0
    row = admin.execute(
        "SELECT action, actor, details->>'status', db_role FROM cache_audit_log WHERE id > %s AND action LIKE 'maintenance.%%'",
        (before,),
    ).fetchone()
    assert row == ("maintenance.partitions_ensure", "cachesvc partitions ensure", "ok", "cachesvc_maintainer")


def test_usage_errors_exit_2(maint_env, tmp_path):
    assert cli(maint_env, "cleanup", "--batch-size", "0").returncode == 2
    assert cli(maint_env, "partitions", "ensure", "--ahead", "99").returncode == 2
    assert cli(maint_env, "audit", "archive", "--before", "not-a-date", "--dest", str(tmp_path)).returncode == 2
    far = cli(maint_env, "audit", "archive", "--before", "2999-01-01", "--dest", str(tmp_path))
    assert far.returncode == 2 and "current month" in report(far)["message"]


@pytest.mark.timing
def test_unreachable_database_is_retried_then_fails(maint_env):
    from cachesvc.localstack import free_port

    env = maint_env | {"CACHESVC_ADMIN_DATABASE_URL": f"postgresql://nobody:x@127.0.0.1:{free_port()}/cachesvc"}
    started = time.monotonic()
    result = cli(env, "verify")
    assert result.returncode == 1
    assert "gave up after 5 attempts" in report(result)["message"]
    assert result.stderr.count("retrying in") == 4
    assert time.monotonic() - started >= 7  # 0.5 + 1 + 2 + 4 seconds of backoff


# -- partitions ---------------------------------------------------------------------------


def test_ensure_fills_gaps_and_dry_run_changes_nothing(maint_env, admin):
    month = add_months(this_month(admin), 2)
    name = f"infinite_pages_cache_y{month:%Y}m{month:%m}"
    admin.execute(f"ALTER TABLE infinite_pages_cache_partitioned DETACH PARTITION {name}")
    admin.execute(f"DROP TABLE {name}")
    dry = report(cli(maint_env, "partitions", "ensure", "--dry-run"))
    assert name in dry["wouldCreate"]
    assert admin.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
    done = report(cli(maint_env, "partitions", "ensure"))
    assert name in done["created"]
    forced = admin.execute("SELECT relforcerowsecurity FROM pg_class WHERE relname = %s", (name,)).fetchone()
    assert forced == (True,)
    assert report(cli(maint_env, "partitions", "ensure"))["created"] == []  # idempotent


def test_retire_drops_only_wholly_expired_past_months(maint_env, admin):
    expired_month = add_months(this_month(admin), -6)
    live_month = add_months(this_month(admin), -5)
    user = uuid.uuid4()
    for month in (expired_month, live_month):
        admin.execute("SELECT create_monthly_cache_partition(%s)", (month,))
        for i in range(5):
            insert_entry(admin, user, key=f"{month}-{i}", created_at=utc(month) + dt.timedelta(days=1), ttl="1 day")
    insert_entry(admin, user, key="still-live", created_at=utc(live_month) + dt.timedelta(days=2), ttl="400 days")
    expired_name = f"infinite_pages_cache_y{expired_month:%Y}m{expired_month:%m}"
    live_name = f"infinite_pages_cache_y{live_month:%Y}m{live_month:%m}"

    dry = report(cli(maint_env, "partitions", "retire", "--dry-run"))
    assert expired_name in dry["wouldRetire"] and live_name not in dry["wouldRetire"]
    assert admin.execute("SELECT to_regclass(%s) IS NOT NULL", (expired_name,)).fetchone() == (True,)

    done = report(cli(maint_env, "partitions", "retire"))
    assert expired_name in done["retired"]
    assert {"partition": live_name, "reason": "has live rows"} in done["kept"]
    assert admin.execute("SELECT to_regclass(%s)", (expired_name,)).fetchone() == (None,)
    assert admin.execute(
        "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)
    ).fetchone() == (6,)
    # Clean up the month kept alive for this test.
    admin.execute(f"DROP TABLE {live_name}")


def test_retire_finishes_a_run_killed_after_detach(maint_env, admin):
    month = add_months(this_month(admin), -7)
    admin.execute("SELECT create_monthly_cache_partition(%s)", (month,))
    insert_entry(admin, uuid.uuid4(), created_at=utc(month) + dt.timedelta(days=3), ttl="1 hour")
    name = f"infinite_pages_cache_y{month:%Y}m{month:%m}"
    killed = cli(maint_env, "partitions", "retire", fault="retire_after_detach")
    assert killed.returncode == -signal.SIGKILL
    assert admin.execute("SELECT relispartition FROM pg_class WHERE relname = %s", (name,)).fetchone() == (False,)
    assert name in report(cli(maint_env, "partitions", "retire"))["retired"]
    assert admin.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)


# -- cleanup ------------------------------------------------------------------------------


def test_cleanup_during_concurrent_reads_and_writes(maint_env, stack, admin):
    users = [uuid.uuid4() for _ in range(4)]
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    admin.execute("SELECT create_monthly_cache_partition(%s)", (past.date(),))
    for user in users:
        admin.execute(
            "INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, created_at, expires_at)"
            " SELECT %s, 'chapter', 'old-' || g, '{}', %s, %s + interval '1 minute' FROM generate_series(1, 1500) g",
            (user, past, past),
        )
        for i in range(20):
            insert_entry(admin, user, key=f"live-{i}", ttl="1 day")
    errors, written, stop = [], [], threading.Event()

    def traffic(user):
        try:
            with connect(stack, "cachesvc_app") as conn:
                n = 0
                while not stop.is_set():
                    with acting_as(conn, user):
                        insert_entry(conn, user, key=f"new-{n}", ttl="1 day")
                        assert conn.execute(
                            "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE cache_key LIKE 'live-%%'"
                            " AND expires_at > now()"
                        ).fetchone()[0] == 20
                    written.append(user)
                    n += 1
        except Exception as exc:  # collected, asserted below
            errors.append(exc)

    threads = [threading.Thread(target=traffic, args=(u,)) for u in users]
    for t in threads:
        t.start()
    try:
        result = cli(maint_env, "cleanup", "--batch-size", "250", "--pause", "0.01")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert result.returncode == 0, result.stdout + result.stderr
    assert report(result)["deleted"] >= 6000
    counts = dict(admin.execute(
        "SELECT cache_key LIKE 'old-%%', count(*) FROM infinite_pages_cache_partitioned"
        " WHERE user_id = ANY(%s) GROUP BY 1", (users,),
    ).fetchall())
    assert counts.get(True, 0) == 0
    assert counts[False] == 20 * len(users) + len(written)


def test_cleanup_dry_run_deletes_nothing(maint_env, admin):
    user = uuid.uuid4()
    insert_entry(admin, user, created_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=3), ttl="1 minute")
    dry = report(cli(maint_env, "cleanup", "--dry-run"))
    assert dry["wouldDelete"] >= 1
    assert admin.execute("SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)).fetchone() == (1,)


# -- audit archive --------------------------------------------------------------------------


def _archive_scenario(maint_env, admin, tmp_path, fault: str | None, months_back=(4, 3, 2), rows=1500):
    start = this_month(admin)
    months = [add_months(start, -n) for n in months_back]
    for month in months:
        seed_audit_month(admin, month, rows)
    before = add_months(months[-1], 1)
    original = past_audit_rows(admin, before)
    dest = tmp_path / "archive"
    args = ("audit", "archive", "--before", str(before), "--dest", str(dest))
    if fault:
        killed = cli(maint_env, *args, fault=fault)
        assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    result = cli(maint_env, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    again = cli(maint_env, *args)  # a third run finds nothing left to do
    assert again.returncode == 0 and report(again)["months"] == []
    return original, dest, before


@pytest.mark.parametrize(
    "fault", [None, "archive_during_write", "archive_before_rename", "archive_after_write", "archive_after_detach"]
)
def test_archive_killed_anywhere_loses_and_duplicates_nothing(maint_env, admin, tmp_path, fault):
    original, dest, before = _archive_scenario(maint_env, admin, tmp_path, fault)
    assert archived_rows(dest) == original  # same rows, same content, each once
    assert admin.execute("SELECT count(*) FROM cache_audit_log WHERE occurred_at < %s", (utc(before),)).fetchone() == (0,)
    assert not list(dest.glob("*.tmp"))
    for manifest in dest.glob("*.manifest.json"):
        m = json.loads(manifest.read_text())
        data = dest / f"{m['partition']}.jsonl.gz"
        import hashlib

        assert hashlib.sha256(data.read_bytes()).hexdigest() == m["sha256"]


def archive_killed_at(args: list[str], env: dict, milestone: str, timeout: float = 60) -> str:
    """Run ``audit archive`` with its progress on a terminal, SIGKILL it as soon as its progress
    shows ``milestone``, and prove the kill landed mid-work: the work had begun (the milestone),
    the process was still running, and it never printed its summary. Returns the progress seen."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""

    def progressed() -> bool:
        nonlocal seen
        if milestone.encode() in seen:
            return True
        assert proc.poll() is None, f"finished before {milestone!r}; its progress: {seen[-400:]!r}"
        if select.select([master], [], [], 0.05)[0]:
            with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
                seen += os.read(master, 65536)
        return False

    try:
        wait_until(progressed, timeout, error=lambda _: f"no {milestone!r} after {timeout}s: {seen[-400:]!r}", interval=0)
        proc.send_signal(signal.SIGKILL)
        stdout, _ = proc.communicate()
    finally:
        os.close(master)
    assert proc.returncode == -signal.SIGKILL and stdout == b"", (proc.returncode, stdout)
    return seen.decode(errors="replace")


def test_archive_killed_at_random_instants(maint_env, admin, tmp_path):
    start = this_month(admin)
    months = [add_months(start, -n) for n in (9, 8)]
    rows = 20000
    for month in months:
        seed_audit_month(admin, month, rows)
    first, second = (f"cache_audit_log_y{m:%Y}m{m:%m}" for m in months)
    before = add_months(months[-1], 1)
    original = past_audit_rows(admin, before)
    dest = tmp_path / "archive"
    args = [sys.executable, "-m", "cachesvc", "audit", "archive", "--before", str(before), "--dest", str(dest)]
    rng = random.Random(7)

    def rows_written(partition: str) -> str:  # the export reports every 5,000 rows
        n = rng.choice(range(5000, rows + 1, 5000))
        return f"{n}/{n} {partition}: rows written"

    # Twice in the first month's export, once in the second's while the first waits to be
    # done, once in the second's after the first was archived and dropped (a month to go).
    for milestone, month_line in (
        (rows_written(first), f"0/2 archiving {first}"),
        (rows_written(first), f"0/2 archiving {first}"),
        (rows_written(second), f"1/2 archiving {second}"),
        (rows_written(second), f"0/1 archiving {second}"),
    ):
        progress = archive_killed_at(args, maint_env, milestone)
        assert month_line in progress, progress[-400:]
    assert [p.name for p in sorted(dest.glob("*.manifest.json"))] == [f"{first}.manifest.json"]
    final = cli(maint_env, "audit", "archive", "--before", str(before), "--dest", str(dest))
    assert final.returncode == 0, final.stdout + final.stderr
    assert [m["partition"] for m in report(final)["months"]] == [second]  # the first was done before
    assert archived_rows(dest) == original
    assert admin.execute("SELECT count(*) FROM cache_audit_log WHERE occurred_at < %s", (utc(before),)).fetchone() == (0,)

    # The loop over manifests of months already dropped ran, and checks each file: a damaged
    # archive of the first month (no longer in the database) is reported.
    data = dest / f"{first}.jsonl.gz"
    intact = data.read_bytes()
    data.write_bytes(intact[:-10])
    damaged = cli(maint_env, "audit", "archive", "--before", str(before), "--dest", str(dest))
    assert damaged.returncode == 3, damaged.stdout + damaged.stderr
    assert report(damaged)["problems"] == [f"{first}: archive in {dest} does not match its manifest"]
    data.write_bytes(intact)
    assert cli(maint_env, "audit", "archive", "--before", str(before), "--dest", str(dest)).returncode == 0


def test_archive_refuses_to_drop_when_the_file_was_tampered_with(maint_env, admin, tmp_path):
    month = add_months(this_month(admin), -10)
    seed_audit_month(admin, month, 50)
    before = add_months(month, 1)
    dest = tmp_path / "archive"
    args = ("audit", "archive", "--before", str(before), "--dest", str(dest))
    assert cli(maint_env, *args, fault="archive_after_write").returncode == -signal.SIGKILL
    data = next(dest.glob("*.jsonl.gz"))
    data.write_bytes(data.read_bytes()[:-10])  # a truncated copy on disk
    result = cli(maint_env, *args)
    assert result.returncode == 0  # it noticed, exported again from the table, verified, then dropped
    assert len(archived_rows(dest)) == 50


def test_archive_then_restore_round_trip_and_retire_respects_it(maint_env, admin, tmp_path):
    month = add_months(this_month(admin), -11)
    seed_audit_month(admin, month, 300)
    before = add_months(month, 1)
    original = past_audit_rows(admin, before)
    dest = tmp_path / "archive"
    assert cli(maint_env, "audit", "archive", "--before", str(before), "--dest", str(dest)).returncode == 0
    file = next(dest.glob("*.jsonl.gz"))
    restored = cli(maint_env, "audit", "restore", str(file))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert report(restored)["restored"] == 300
    assert report(cli(maint_env, "audit", "restore", str(file)))["restored"] == 0  # idempotent
    assert past_audit_rows(admin, before) == original
    name = file.name.removesuffix(".jsonl.gz")
    assert name not in report(cli(maint_env, "partitions", "retire"))["retired"]
    # Archive it again: same rows, same bytes; the month is dropped once more.
    assert cli(maint_env, "audit", "archive", "--before", str(before), "--dest", str(dest)).returncode == 0
    assert archived_rows(dest) == original
    tampered = dest / "cache_audit_log_y1999m01.jsonl.gz"
    tampered.write_bytes(b"not gzip")
    assert cli(maint_env, "audit", "restore", str(tampered)).returncode == 2


# -- verify and health --------------------------------------------------------------------


def test_verify_passes_on_a_fresh_deployment(maint_env):
    result = cli(maint_env, "verify")
    assert result.returncode == 0, result.stdout
    assert report(result)["failed"] == 0 and report(result)["checks"] > 50


def _current_partition(admin) -> str:
    return admin.execute(
        "SELECT partition_name FROM partition_health_metrics WHERE parent_table = 'infinite_pages_cache_partitioned'"
        " AND now() >= range_start AND now() < range_end"
    ).fetchone()[0]


@pytest.mark.parametrize("breakage", ["rls_disabled", "app_granted", "next_month_missing"])
def test_verify_names_what_is_broken(maint_env, admin, breakage):
    current = _current_partition(admin)
    nxt = add_months(this_month(admin), 1)
    next_name = f"infinite_pages_cache_y{nxt:%Y}m{nxt:%m}"
    if breakage == "rls_disabled":
        admin.execute(f"ALTER TABLE {current} DISABLE ROW LEVEL SECURITY")
        expected = f"{current}: row-level security not enabled and forced"
    elif breakage == "app_granted":
        admin.execute(f"GRANT SELECT ON {current} TO cache_app")
        expected = f"{current}: cache_app has SELECT on a partition"
    else:
        admin.execute(f"ALTER TABLE infinite_pages_cache_partitioned DETACH PARTITION {next_name}")
        expected = f"partitions missing for the next 3 months: {next_name}"
    try:
        result = cli(maint_env, "verify")
        assert result.returncode == 3
        assert any(expected in p for p in report(result)["problems"]), report(result)["problems"]
    finally:
        if breakage == "rls_disabled":
            admin.execute(f"ALTER TABLE {current} ENABLE ROW LEVEL SECURITY")
        elif breakage == "app_granted":
            admin.execute(f"REVOKE SELECT ON {current} FROM cache_app")
        else:
            admin.execute(
                sql.SQL("ALTER TABLE infinite_pages_cache_partitioned ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                    sql.Identifier(next_name), sql.Literal(utc(nxt)), sql.Literal(utc(add_months(nxt, 1)))
                )
            )
    assert cli(maint_env, "verify").returncode == 0


def test_health_reports_partitions_and_warns(maint_env, admin):
    assert cli(maint_env, "partitions", "ensure").returncode == 0
    assert cli(maint_env, "cleanup").returncode == 0
    result = cli(maint_env, "health", "partitions")
    body = report(result)
    names = {p["partition"] for p in body["partitions"]}
    assert _current_partition(admin) in names
    assert body["monthsAhead"]["infinite_pages_cache_partitioned"] >= 3
    assert body["lastSuccessfulRun"]["cleanup"] is not None
    # Coverage shrinks below the threshold: a warning and exit 3.
    keep = []
    for n in (2, 3):
        month = add_months(this_month(admin), n)
        name = f"infinite_pages_cache_y{month:%Y}m{month:%m}"
        admin.execute(f"ALTER TABLE infinite_pages_cache_partitioned DETACH PARTITION {name}")
        keep.append(name)
    try:
        warned = cli(maint_env, "health", "partitions")
        assert warned.returncode == 3
        assert any("months of partitions ahead" in p for p in report(warned)["problems"])
    finally:
        for name in keep:
            admin.execute(f"DROP TABLE {name}")
        assert cli(maint_env, "partitions", "ensure").returncode == 0


# -- wrappers and runbook queries ---------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "command"),
    [("create-partitions", "partitions ensure"), ("cleanup-expired", "cleanup"),
     ("verify-deployment", "verify"), ("check-partition-health", "health partitions")],
)
def test_scripts_run_their_command(maint_env, script, command):
    result = subprocess.run([str(PROJECT_ROOT / "scripts" / script)], env=maint_env, capture_output=True, text=True, timeout=120)
    assert result.returncode in (0, 3), result.stdout + result.stderr
    assert report(result)["command"] == command


def test_archive_script_needs_its_arguments(maint_env, tmp_path):
    result = subprocess.run([str(PROJECT_ROOT / "scripts" / "archive-audit"), "--dest", str(tmp_path)],
                            env=maint_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report(result)["command"] == "audit archive"


CHECKS = sorted((PROJECT_ROOT / "sql" / "checks").glob("*.sql"))


@pytest.mark.parametrize("check", CHECKS, ids=[c.stem for c in CHECKS])
def test_runbook_queries_run(stack, check):
    user = "cachesvc_monitor" if "-- reads views only" in check.read_text() else "cachesvc_maintainer"
    url = stack.url(user, direct=True)
    result = subprocess.run(["psql", url, "-X", "-v", "ON_ERROR_STOP=1", "-f", str(check)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_there_are_runbook_queries():
    assert len(CHECKS) >= 6


def test_schedule_files_name_real_commands():
    deploy = PROJECT_ROOT / "deploy"
    services = {p.stem for p in (deploy / "systemd").glob("*.service")}
    timers = {p.stem for p in (deploy / "systemd").glob("*.timer")}
    assert timers and timers <= services
    texts = [p.read_text() for p in (deploy / "systemd").glob("*.service")] + [(deploy / "cron" / "cachesvc.crontab").read_text()]
    for text in texts:
        for word in text.split():
            if word.startswith("/opt/cachesvc/scripts/"):
                assert (PROJECT_ROOT / "scripts" / word.rsplit("/", 1)[1]).exists(), word
    crontab = texts[-1]
    for script in ("create-partitions", "cleanup-expired", "archive-audit", "check-partition-health"):
        assert script in crontab


def test_scheduled_health_checks_write_the_metrics_the_alerts_read():
    """The partition and maintenance alerts read `cachesvc health partitions --metrics-file`'s
    output: a schedule that runs the check without it leaves them blind (and fires the stale alert)."""
    deploy = PROJECT_ROOT / "deploy"
    unit = (deploy / "systemd" / "cachesvc-health.service").read_text()
    cron = [line for line in (deploy / "cron" / "cachesvc.crontab").read_text().splitlines()
            if "check-partition-health" in line and not line.startswith("#")]
    exec_start = [line for line in unit.splitlines() if line.startswith("ExecStart=")]
    assert exec_start and cron
    for line in exec_start + cron:
        assert "--metrics-file " in line and ".prom" in line, line
