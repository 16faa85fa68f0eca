"""Maintenance commands that touch the same objects take the same lock (runner.LOCKS)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
import uuid

import pytest

from cachesvc.cli import build_parser
from cachesvc.maintenance.partitions import AUDIT_BUSY, add_months
from cachesvc.maintenance.runner import AUDIT_LOCK, LOCKS, lock_key
from tests.harness import (
    archived_rows,
    cli,
    connect,
    insert_entry,
    past_audit_rows,
    report,
    seed_audit_month,
    this_month,
    utc,
)


def audit_name(month: dt.date) -> str:
    return f"cache_audit_log_y{month:%Y}m{month:%m}"


def archived_records(admin, name: str) -> int:
    return admin.execute(
        "SELECT count(*) FROM cache_audit_log WHERE action = 'maintenance.audit_archive_month'"
        " AND details->>'partition' = %s AND details->>'state' = 'archived'",
        (name,),
    ).fetchone()[0]


def wait_for_detach_blocked(admin, timeout: float = 30) -> None:
    """Until a maintenance session waits on a lock in ALTER TABLE … DETACH."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        waiting = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cachesvc-maintenance'"
            " AND wait_event_type = 'Lock' AND query ILIKE '%%DETACH PARTITION%%'"
        ).fetchone()[0]
        if waiting:
            return
        time.sleep(0.05)
    pytest.fail("audit archive never waited on DETACH")


def test_archive_waiting_on_detach_and_retire_meanwhile(maint_env, admin, stack, tmp_path):
    """The race of the issue: a reader holds an audit month, archive blocks in DETACH
    CONCURRENTLY, retire runs meanwhile. Neither fails, nothing is lost, each month is
    archived once and gone."""
    start = this_month(admin)
    months = [add_months(start, -n) for n in (14, 13)]
    for month in months:
        seed_audit_month(admin, month, 400)
    before = add_months(months[-1], 1)
    original = past_audit_rows(admin, before)
    dest = tmp_path / "archive"
    archive_args = ["audit", "archive", "--before", str(before), "--dest", str(dest)]

    with connect(stack, "cachesvc_maintainer", direct=True) as reader:
        # A transaction reading the oldest month through the parent: DETACH … CONCURRENTLY
        # must wait for it to end.
        reader.execute("SELECT count(*) FROM cache_audit_log WHERE occurred_at >= %s AND occurred_at < %s",
                       (utc(months[0]), utc(add_months(months[0], 1))))
        archive = subprocess.Popen([sys.executable, "-m", "cachesvc", *archive_args], env=maint_env,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_for_detach_blocked(admin)
            assert archived_records(admin, audit_name(months[0])) == 1  # recorded, now detaching
            retire = cli(maint_env, "partitions", "retire")
        finally:
            reader.rollback()  # the reader goes away; the archive may finish
        out, err = archive.communicate(timeout=120)

    assert retire.returncode == 0, retire.stdout + retire.stderr
    retired = report(retire)
    assert retired["status"] == "ok"
    assert AUDIT_LOCK in retired["locksNotHeld"]
    skipped = {s["partition"] for s in retired["skipped"]}
    assert {audit_name(m) for m in months} <= skipped
    assert not {audit_name(m) for m in months} & set(retired["retired"])

    assert archive.returncode == 0, out + err
    assert [m["partition"] for m in json.loads(out)["months"]] == [audit_name(m) for m in months]
    assert archived_rows(dest) == original  # every row, once
    for month in months:
        name = audit_name(month)
        manifest = json.loads((dest / f"{name}.manifest.json").read_text())
        assert manifest["rows"] == 400
        assert admin.execute("SELECT to_regclass(%s)", (name,)).fetchone() == (None,)
        assert archived_records(admin, name) == 1
    assert admin.execute("SELECT count(*) FROM cache_audit_log WHERE occurred_at < %s", (utc(before),)).fetchone() == (0,)

    # Both again, in turn: nothing left to do, nothing fails.
    again = cli(maint_env, *archive_args)
    assert again.returncode == 0 and report(again)["months"] == [] and "problems" not in report(again)
    retire_again = cli(maint_env, "partitions", "retire")
    assert retire_again.returncode == 0 and "locksNotHeld" not in report(retire_again)


def test_while_the_audit_lock_is_held(maint_env, admin, stack, tmp_path):
    """Archive and restore step aside; retire still retires cache months and leaves audit
    months alone, saying why."""
    start = this_month(admin)
    audit_month, cache_month = add_months(start, -15), add_months(start, -16)
    seed_audit_month(admin, audit_month, 10)
    before = add_months(audit_month, 1)
    dest = tmp_path / "archive"
    admin.execute(
        "INSERT INTO cache_audit_log (actor, action, details) VALUES ('test', 'maintenance.audit_archive_month', %s)",
        (json.dumps({"state": "archived", "partition": audit_name(audit_month)}),),
    )  # as if an archive had recorded it and were now detaching it
    admin.execute("SELECT create_monthly_cache_partition(%s)", (cache_month,))
    insert_entry(admin, uuid.uuid4(), created_at=utc(cache_month) + dt.timedelta(days=1), ttl="1 hour")
    cache_name = f"infinite_pages_cache_y{cache_month:%Y}m{cache_month:%m}"

    with connect(stack, "cachesvc_maintainer", direct=True, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtextextended(%s, 0))", (lock_key(AUDIT_LOCK),))
        archive = cli(maint_env, "audit", "archive", "--before", str(before), "--dest", str(dest))
        restore = cli(maint_env, "audit", "restore", str(dest / "missing.jsonl.gz"))
        retire = cli(maint_env, "partitions", "retire")
        holder.execute("SELECT pg_advisory_unlock(hashtextextended(%s, 0))", (lock_key(AUDIT_LOCK),))

    for result in (archive, restore):
        assert result.returncode == 0, result.stdout + result.stderr
        assert report(result)["status"] == "already_running" and report(result)["lock"] == AUDIT_LOCK
    assert retire.returncode == 0, retire.stdout + retire.stderr
    retired = report(retire)
    assert cache_name in retired["retired"]
    assert audit_name(audit_month) not in retired["retired"]
    assert {"partition": audit_name(audit_month), "reason": AUDIT_BUSY} in retired["skipped"]
    assert "audit archive" in retired["locksNotHeld"][AUDIT_LOCK]
    assert admin.execute("SELECT to_regclass(%s) IS NOT NULL", (audit_name(audit_month),)).fetchone() == (True,)
    # Free again: retire drops the month recorded as archived.
    assert audit_name(audit_month) in report(cli(maint_env, "partitions", "retire"))["retired"]


def test_every_command_declares_its_locks():
    """A new command that runs through the runner must say which objects it touches (runner.LOCKS)."""
    import argparse

    parser = build_parser()
    commands = set()
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
            leaves = {f"{name} {child}": p for a in nested for child, p in a.choices.items()} if nested else {name: sub}
            for command, p in leaves.items():
                assert p.get_default("maintenance_command") in (None, command)
                commands |= {command} if p.get_default("maintenance_command") else set()
    assert commands >= {"partitions ensure", "cleanup", "audit archive", "features load"}
    assert commands == set(LOCKS)
    assert {name for name, locks in LOCKS.items() if AUDIT_LOCK in locks.required + locks.optional} == {
        "audit archive", "audit restore", "partitions retire"}
