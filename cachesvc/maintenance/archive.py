"""Audit-log archiving: a month to compressed JSON Lines plus a manifest, then the month dropped.

Per month partition ``P`` (only whole months that ended before ``--before`` and before the
current month), in ``DEST``:

* ``P.jsonl.gz``: one ``row_to_json`` object per line, ordered by id (gzip with a fixed
  mtime, so the same rows always give the same bytes);
* ``P.manifest.json``: partition, month, row count, first/last id, SHA-256 and size of the file.

Order of work, each step safe to kill: write both files as ``*.tmp``, fsync, rename, fsync
the directory; re-read the file and check it against the manifest and against the table;
record "archived" in the audit log; DETACH … CONCURRENTLY; DROP. A re-run starts from what
it finds: a manifest that no longer matches the table (or no manifest) means export again;
a valid archive of a month still in the database means only the drop is left; a month gone
from the database with a valid archive is done. Nothing is deleted before its copy is
verified, and nothing is archived twice.
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
import json
import os
from pathlib import Path

from psycopg import sql
from psycopg.types.json import Jsonb

from cachesvc.maintenance.partitions import AUDIT, add_months, db_today, detach, existing, month_start
from cachesvc.maintenance.runner import Run, UsageError, fault_point

MONTH_ACTION = "maintenance.audit_archive_month"


def data_path(dest: Path, partition: str) -> Path:
    return dest / f"{partition}.jsonl.gz"


def manifest_path(dest: Path, partition: str) -> Path:
    return dest / f"{partition}.manifest.json"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    fault_point("archive_before_rename")
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def read_archive(path: Path) -> tuple[int, int | None, int | None, str]:
    """(rows, first id, last id, sha256) of an archive file, by reading it all back."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    rows, first, last = 0, None, None
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            row_id = json.loads(line)["id"]
            if last is not None and row_id <= last:
                raise ValueError(f"{path.name}: ids not ascending at {row_id}")
            first = row_id if first is None else first
            last = row_id
            rows += 1
    return rows, first, last, digest


def verify(dest: Path, partition: str) -> dict | None:
    """The manifest, if the archive file exists and matches it exactly; else None."""
    try:
        manifest = json.loads(manifest_path(dest, partition).read_text())
        rows, first, last, digest = read_archive(data_path(dest, partition))
    except (OSError, ValueError, KeyError, EOFError, gzip.BadGzipFile):
        return None
    expected = (manifest.get("rows"), manifest.get("firstId"), manifest.get("lastId"), manifest.get("sha256"))
    return manifest if expected == (rows, first, last, digest) else None


def table_facts(run: Run, partition: str) -> tuple[int, int | None, int | None]:
    query = sql.SQL("SELECT count(*), min(id), max(id) FROM {}").format(sql.Identifier(partition))
    return tuple(run.conn.execute(query).fetchone())


def export(run: Run, dest: Path, partition: str, month: dt.date) -> dict:
    rows, first, last = 0, None, None
    digest = hashlib.sha256()

    class Hashing:  # the bytes on disk are exactly the bytes hashed
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            digest.update(data)
            return self.fh.write(data)

        def flush(self):
            self.fh.flush()

    def write(fh):
        nonlocal rows, first, last
        with gzip.GzipFile(filename="", mode="wb", fileobj=Hashing(fh), mtime=0) as gz:
            query = sql.SQL("SELECT id, row_to_json(t)::text FROM {} t ORDER BY id").format(sql.Identifier(partition))
            for row_id, line in run.conn.cursor().stream(query):
                gz.write(line.encode() + b"\n")
                first = row_id if first is None else first
                last = row_id
                rows += 1
                if rows % 5000 == 0:
                    run.progress(f"{partition}: rows written", rows, rows)
        fault_point("archive_during_write")

    file = data_path(dest, partition)
    _write_atomically(file, write)
    manifest = {
        "partition": partition,
        "month": f"{month:%Y-%m}",
        "rows": rows,
        "firstId": first,
        "lastId": last,
        "sha256": digest.hexdigest(),
        "bytes": file.stat().st_size,
        "format": "jsonl+gzip, one row_to_json object per line, ordered by id",
        "createdAt": dt.datetime.now(dt.UTC).isoformat(),
    }
    _write_atomically(manifest_path(dest, partition), lambda fh: fh.write(json.dumps(manifest, indent=2).encode()))
    return manifest


def record_month(run: Run, partition: str, state: str, **details) -> None:
    run.conn.execute(
        "INSERT INTO cache_audit_log (actor, action, details) VALUES (%s, %s, %s)",
        (f"cachesvc {run.command}", MONTH_ACTION, Jsonb({"state": state, "partition": partition} | details)),
    )


def archive_state(run: Run, partition: str) -> tuple[str, str | None] | None:
    """The latest recorded (state, sha256) of a month: 'archived' or 'restored'."""
    row = run.conn.execute(
        "SELECT details->>'state', details->>'sha256' FROM cache_audit_log"
        " WHERE action = %s AND details->>'partition' = %s ORDER BY occurred_at DESC, id DESC LIMIT 1",
        (MONTH_ACTION, partition),
    ).fetchone()
    return tuple(row) if row else None


def _detached(run: Run) -> set[str]:
    rows = run.conn.execute(
        "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
        " AND NOT relispartition AND relname ~ '^cache_audit_log_y[0-9]{4}m[0-9]{2}$'"
    ).fetchall()
    return {r[0] for r in rows}


def retention_cutoff(run: Run) -> dt.date:
    """First day of the oldest month kept: this month minus CACHESVC_AUDIT_RETENTION_MONTHS."""
    return add_months(month_start(db_today(run)), -run.settings.maintenance.audit_retention_months)


def archive(run: Run, before: dt.date, dest: Path) -> None:
    this_month = month_start(db_today(run))
    if before > this_month:
        raise UsageError(f"--before must be at most {this_month} (the current month is never archived)")
    dest.mkdir(parents=True, exist_ok=True)
    attached = {name: (start.date(), pending) for name, start, _, pending in existing(run, AUDIT) if start is not None}
    months = {name: start for name, (start, _) in attached.items()}
    for name in _detached(run):  # a run killed between DETACH and DROP
        months.setdefault(name, dt.datetime.strptime(name[-8:], "y%Ym%m").date())
    months = {name: start for name, start in months.items() if add_months(start, 1) <= before}
    results = []
    for index, (name, start) in enumerate(sorted(months.items(), key=lambda kv: kv[1])):
        run.progress(f"archiving {name}", index, len(months))
        results.append(_archive_month(run, dest, name, start, attached.get(name)))
    # Months already archived and dropped by an earlier run.
    for manifest in sorted(dest.glob("cache_audit_log_y*.manifest.json")):
        name = manifest.name.removesuffix(".manifest.json")
        if name not in months and verify(dest, name) is None:
            run.problems.append(f"{name}: archive in {dest} does not match its manifest")
    run.summary |= {"before": str(before), "dest": str(dest), "months": results}


def _archive_month(run: Run, dest: Path, name: str, month: dt.date, attached: tuple | None) -> dict:
    rows, first, last = table_facts(run, name)
    manifest = verify(dest, name)
    if manifest is None or (manifest["rows"], manifest["firstId"], manifest["lastId"]) != (rows, first, last):
        if run.dry_run:
            return {"partition": name, "rows": rows, "action": "would export and drop"}
        manifest = export(run, dest, name, month)
    fault_point("archive_after_write")
    check = verify(dest, name)  # re-read from disk, all of it
    if check is None or (check["rows"], check["firstId"], check["lastId"]) != (rows, first, last):
        raise ValueError(f"{name}: the archive read back does not match the table; nothing deleted")
    if run.dry_run:
        return {"partition": name, "rows": rows, "action": "would drop (already exported)"}
    if archive_state(run, name) != ("archived", check["sha256"]):
        record_month(run, name, "archived", file=data_path(dest, name).name, sha256=check["sha256"], rows=rows)
    if attached is not None:
        detach(run, AUDIT, name, attached[1])
    fault_point("archive_after_detach")
    run.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
    return {"partition": name, "rows": rows, "sha256": check["sha256"], "file": str(data_path(dest, name))}


def restore(run: Run, file: Path) -> None:
    """Put an archived month back (idempotent: rows already present are skipped)."""
    name = file.name.removesuffix(".jsonl.gz")
    dest = file.parent
    manifest = verify(dest, name)
    if manifest is None:
        raise UsageError(f"{file}: missing, unreadable, or not matching {manifest_path(dest, name).name}")
    month = dt.date.fromisoformat(manifest["month"] + "-01")
    if run.dry_run:
        run.summary |= {"partition": name, "wouldRestore": manifest["rows"]}
        return
    run.conn.execute("SELECT create_monthly_audit_partition(%s)", (month,))
    restored, batch = 0, []

    def flush():
        nonlocal restored
        if batch:
            cur = run.conn.execute(
                "INSERT INTO cache_audit_log OVERRIDING SYSTEM VALUE"
                " SELECT * FROM json_populate_recordset(NULL::cache_audit_log, %s::json)"
                " ON CONFLICT (id, occurred_at) DO NOTHING",
                ("[" + ",".join(batch) + "]",),
            )
            restored += cur.rowcount
            batch.clear()

    with gzip.open(file, "rt", encoding="utf-8") as fh:
        for line in fh:
            batch.append(line.rstrip("\n"))
            if len(batch) >= 2000:
                flush()
    flush()
    record_month(run, name, "restored", sha256=manifest["sha256"], rows=restored)
    run.summary |= {"partition": name, "rows": manifest["rows"], "restored": restored}
