"""What every benchmark prints besides its figures: progress on stderr, the machine it ran on."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from cachesvc.localstack import find_pg_bindir, find_pgbouncer


def say(msg: str) -> None:
    """Progress, on stderr (stdout is for the figures)."""
    sys.stderr.write(f"bench: {msg}\n")
    sys.stderr.flush()


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    mem_kb = int(next(ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")))
    pg = subprocess.run([str(find_pg_bindir() / "postgres"), "--version"], capture_output=True, text=True).stdout.strip()
    bouncer = subprocess.run([str(find_pgbouncer()), "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    return (f"{os.cpu_count()} cores ({cpu}), {mem_kb // 1024 // 1024} GiB; {pg}; {bouncer}; "
            f"Python {platform.python_version()}; server, PgBouncer, service and load generator share the machine")
