"""Monthly partitions: keep months ahead, retire months that are wholly expired (or archived)."""

from __future__ import annotations

import datetime as dt

from psycopg import sql

from cachesvc.maintenance.runner import AUDIT_LOCK, Run, UsageError, fault_point

CACHE = "infinite_pages_cache_partitioned"
AUDIT = "cache_audit_log"
CREATORS = {CACHE: "create_monthly_cache_partition", AUDIT: "create_monthly_audit_partition"}
PREFIXES = {CACHE: "infinite_pages_cache", AUDIT: "cache_audit_log"}
AUDIT_BUSY = "an audit archive or restore holds the audit lock: the month is left to it"


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def add_months(day: dt.date, n: int) -> dt.date:
    year, month = divmod(day.month - 1 + n, 12)
    return dt.date(day.year + year, month + 1, 1)


def partition_name(parent: str, month: dt.date) -> str:
    return f"{PREFIXES[parent]}_y{month:%Y}m{month:%m}"


def db_today(run: Run) -> dt.date:
    return run.conn.execute("SELECT (now() AT TIME ZONE 'UTC')::date").fetchone()[0]


def existing(run: Run, parent: str) -> list[tuple[str, dt.datetime, dt.datetime, bool]]:
    """(name, range start, range end, detach pending) of every partition of ``parent``."""
    return run.conn.execute(
        """
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''([^'']+)''\\)'))[1]::timestamptz,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \\(''([^'']+)''\\)'))[1]::timestamptz,
               i.inhdetachpending
          FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = %s::regclass
         ORDER BY 2 NULLS FIRST
        """,
        (parent,),
    ).fetchall()


def ensure(run: Run, ahead: int) -> None:
    if not 0 <= ahead <= 24:
        raise UsageError("--ahead must be between 0 and 24 months")
    this_month = month_start(db_today(run))
    months = [add_months(this_month, n) for n in range(ahead + 1)]
    created: list[str] = []
    for parent, creator in CREATORS.items():
        have = {row[0] for row in existing(run, parent)}
        for i, month in enumerate(months):
            name = partition_name(parent, month)
            run.progress(f"{parent}: {name}", i + 1, len(months))
            if name in have:
                continue
            if not run.dry_run:
                run.conn.execute(sql.SQL("SELECT {}(%s)").format(sql.Identifier(creator)), (month,))
            created.append(name)
    run.summary |= {
        "ahead": ahead,
        "through": f"{months[-1]:%Y-%m}",
        ("wouldCreate" if run.dry_run else "created"): created,
    }


def archived_months(run: Run) -> set[str]:
    """Audit partitions whose archive is complete (recorded by `audit archive`)."""
    rows = run.conn.execute(
        "SELECT DISTINCT ON (details->>'partition') details->>'partition', details->>'state'"
        "  FROM cache_audit_log WHERE action = 'maintenance.audit_archive_month'"
        " ORDER BY details->>'partition', occurred_at DESC, id DESC"
    ).fetchall()
    return {name for name, state in rows if state == "archived"}


def retire(run: Run) -> None:
    """Drop cache months in which every row has expired, and audit months already archived.

    Never the current month, never a month with a live row. Each month goes in three
    steps, each safe to interrupt: DETACH … CONCURRENTLY (two short transactions that do
    not block the service's reads and writes), a second look for live rows (re-attach if
    any appeared), then DROP. Audit months only under the audit lock: while an archive or
    a restore holds it, they are theirs, and skipped here.
    """
    now = run.conn.execute("SELECT now()").fetchone()[0]
    retired, kept, skipped = [], [], []
    done_archives = archived_months(run)
    audit_held = run.holds(AUDIT_LOCK)
    for parent in (CACHE, AUDIT):
        for name, start, end, pending in existing(run, parent):
            if end is None or end > now:
                continue  # the current month or later (or a DEFAULT partition): never retired
            if parent == CACHE:
                if _has_live_rows(run, name):
                    kept.append({"partition": name, "reason": "has live rows"})
                    continue
            elif not audit_held:
                skipped.append({"partition": name, "reason": AUDIT_BUSY})
                continue
            elif name not in done_archives:
                skipped.append({"partition": name, "reason": "not archived yet"})
                continue
            if run.dry_run:
                retired.append(name)
                continue
            run.progress(f"retiring {name}")
            detach(run, parent, name, pending)
            fault_point("retire_after_detach")
            if parent == CACHE and _has_live_rows(run, name):
                run.conn.execute(
                    sql.SQL("ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})").format(
                        sql.Identifier(parent), sql.Identifier(name), sql.Literal(start), sql.Literal(end)
                    )
                )
                kept.append({"partition": name, "reason": "a live row appeared; re-attached"})
                continue
            run.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            retired.append(name)
    # A run killed between DETACH and DROP leaves a detached month behind: finish it.
    for name in _detached_leftovers(run):
        is_cache = name.startswith(PREFIXES[CACHE] + "_y")
        if not is_cache and not audit_held:
            skipped.append({"partition": name, "reason": AUDIT_BUSY})
            continue
        safe = not _has_live_rows(run, name) if is_cache else name in done_archives
        if safe and not run.dry_run:
            run.conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(name)))
            retired.append(name)
        elif not safe:
            kept.append({"partition": name, "reason": "detached, but not safe to drop"})
    run.summary |= {("wouldRetire" if run.dry_run else "retired"): retired, "kept": kept, "skipped": skipped}


def detach(run: Run, parent: str, name: str, pending: bool) -> None:
    """DETACH CONCURRENTLY, or FINALIZE one that a killed run left pending."""
    mode = "FINALIZE" if pending else "CONCURRENTLY"
    run.conn.execute(
        sql.SQL("ALTER TABLE {} DETACH PARTITION {} " + mode).format(sql.Identifier(parent), sql.Identifier(name))
    )


def _has_live_rows(run: Run, name: str) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE expires_at > now())").format(sql.Identifier(name))
    return run.conn.execute(query).fetchone()[0]


def _detached_leftovers(run: Run) -> list[str]:
    """Month tables of ours that are no longer partitions (a retire killed before its DROP)."""
    rows = run.conn.execute(
        """
        SELECT c.relname FROM pg_class c
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND NOT c.relispartition
           AND (c.relname ~ '^infinite_pages_cache_y[0-9]{4}m[0-9]{2}$' OR c.relname ~ '^cache_audit_log_y[0-9]{4}m[0-9]{2}$')
        """
    ).fetchall()
    return [r[0] for r in rows]
