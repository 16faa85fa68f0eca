"""A PgBouncer of our own, started from the files ``cachesvc pgbouncer config`` renders."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from cachesvc.localstack.processes import StackError, give, port_in_use, run_as, spawn, stop_process, tail


def find_pgbouncer() -> Path:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.path.exists(p)), None
    )
    if not found:
        raise StackError("pgbouncer not found; run scripts/bootstrap or install the 'pgbouncer' OS package")
    return Path(found)


@dataclass
class LocalPgBouncer:
    """PgBouncer started from the files ``cachesvc pgbouncer config`` wrote into ``directory``."""

    directory: Path
    port: int
    proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30) -> None:
        owner = run_as()
        give(self.directory, owner)
        if port_in_use(self.port):
            raise StackError(f"port {self.port} is already in use; choose another (CACHESVC_PGBOUNCER_PORT)")
        log = self.directory / "pgbouncer.stdout"
        self.proc = spawn([str(find_pgbouncer()), str(self.directory / "pgbouncer.ini")], log, owner)
        deadline = time.monotonic() + timeout
        while not port_in_use(self.port):
            if self.proc.poll() is not None:
                raise StackError(f"pgbouncer exited ({self.proc.returncode}):\n{tail(log)}{tail(self.directory / 'pgbouncer.log')}")
            if time.monotonic() > deadline:
                raise StackError(f"pgbouncer not listening after {timeout}s")
            time.sleep(0.05)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM)  # immediate shutdown: clients are gone already
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
