"""Server CPU per request, apart for the service, PgBouncer and PostgreSQL, read from /proc.

A process's CPU is ``utime + stime`` of /proc/<pid>/stat; a server's is its main process's,
its children's that have ended and been waited for (``cutime + cstime``), and its living
children's, so that PostgreSQL backends that come and go during a run are all counted. The
load generator's own CPU is not in any of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()  # fields from state on (the name may hold spaces)


def tree_seconds(root: int) -> float:
    """CPU seconds of ``root``, its waited-for children, and its living children."""
    fields = _stat(root)
    if fields is None:
        return 0.0
    total = sum(int(f) for f in fields[11:15])  # utime stime cutime cstime (fields 14-17)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (child := _stat(int(entry.name))) is not None and int(child[1]) == root:
            total += int(child[11]) + int(child[12])
    return total / TICK


@contextlib.contextmanager
def measured(pids: dict[str, int]) -> Iterator[dict[str, float]]:
    """CPU seconds each named process tree used in the block (filled in when it ends)."""
    before = {name: tree_seconds(pid) for name, pid in pids.items()}
    used: dict[str, float] = {}
    yield used
    used.update({name: round(tree_seconds(pid) - before[name], 3) for name, pid in pids.items()})


def per_request(used: dict[str, float], requests: int) -> dict[str, float]:
    """Milliseconds of CPU per request, by component."""
    return {name: round(seconds * 1000 / requests, 3) if requests else None for name, seconds in used.items()}
