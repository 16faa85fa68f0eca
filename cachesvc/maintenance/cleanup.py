"""Expired rows: deleted in small committed batches, with a pause between them; expired leases too."""

from __future__ import annotations

import time

from cachesvc.maintenance.runner import Run, UsageError

# Rows that a concurrent writer has locked are skipped by the function (SKIP LOCKED) and
# picked up by a later run, so cleanup never waits on the service.
BATCH = "SELECT cleanup_expired_cache_entries_production(%s, 1)"


def cleanup(run: Run, batch_size: int, max_seconds: float, pause: float) -> None:
    if batch_size < 1 or max_seconds <= 0 or pause < 0:
        raise UsageError("--batch-size and --max-seconds must be positive, --pause not negative")
    expired = run.conn.execute(
        "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE expires_at <= now()"
    ).fetchone()[0]
    leases = run.conn.execute("SELECT count(*) FROM cache_leases WHERE expires_at <= now()").fetchone()[0]
    if run.dry_run:
        run.summary |= {"wouldDelete": expired, "wouldDeleteLeases": leases, "batchSize": batch_size}
        return
    # Expired generate-once leases hold nothing; the next caller of their key takes them over
    # anyway, so only keys nobody asks for again leave rows behind. Few: one statement.
    leases = run.conn.execute("DELETE FROM cache_leases WHERE expires_at <= now()").rowcount
    deadline = time.monotonic() + max_seconds
    deleted = batches = 0
    finished = False
    while time.monotonic() < deadline:
        removed = run.conn.execute(BATCH, (batch_size,)).fetchone()[0]  # autocommit: each batch commits
        deleted += removed
        batches += 1
        run.progress("expired rows deleted", deleted, max(expired, deleted))
        if removed < batch_size:
            finished = True
            break
        time.sleep(pause)
    run.summary |= {"deleted": deleted, "batches": batches, "batchSize": batch_size, "finished": finished,
                    "leasesDeleted": leases}
