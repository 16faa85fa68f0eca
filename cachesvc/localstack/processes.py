"""The OS side of the local stack: free ports, the user servers run as, spawning and stopping.

``initdb``, ``postgres`` and ``pgbouncer`` refuse to run as root, so when we are root they
run as the unprivileged ``postgres`` OS user (created by the OS package), in directories
that user owns. Children get a parent-death signal, so a killed parent leaves no stray
server behind.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import signal
import socket
import subprocess
from pathlib import Path

SERVICE_OS_USER = "postgres"


class StackError(RuntimeError):
    """The local stack cannot be started; the message says what to do."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_as() -> pwd.struct_passwd | None:
    """The OS user the servers run as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_OS_USER)
    except KeyError:
        raise StackError(
            f"running as root, and there is no '{SERVICE_OS_USER}' OS user to run PostgreSQL as; "
            "install the 'postgresql' OS package (scripts/bootstrap does)"
        ) from None


def as_user(owner: pwd.struct_passwd | None) -> dict:
    """``subprocess`` arguments that run a child as ``owner`` (nothing when it is ourselves)."""
    return {
        "user": owner.pw_uid if owner else None,
        "group": owner.pw_gid if owner else None,
        "extra_groups": [] if owner else None,
    }


def give(path: Path, owner: pwd.struct_passwd | None) -> None:
    """Make ``path`` (recursively) owned by the OS user the servers run as."""
    if owner is None:
        return
    for root, dirs, files in os.walk(path):
        os.chown(root, owner.pw_uid, owner.pw_gid)
        for name in dirs + files:
            os.lchown(os.path.join(root, name), owner.pw_uid, owner.pw_gid)


def check_runnable(path: Path, owner: pwd.struct_passwd | None) -> None:
    """The server user must be able to reach ``path`` (e.g. a checkout under /root is not)."""
    if owner is None:
        return
    probe = subprocess.run(["test", "-w", str(path)], **as_user(owner))
    if probe.returncode != 0:
        raise StackError(
            f"the '{owner.pw_name}' OS user cannot write {path} (a parent directory is not "
            "searchable by it); set CACHESVC_HOME to a directory it can reach, e.g. /var/tmp/cachesvc"
        )


def _die_with_parent() -> None:  # runs in the child between fork and exec
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(argv: list[str], log: Path, owner: pwd.struct_passwd | None) -> subprocess.Popen:
    log_fh = open(log, "ab")
    try:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            **as_user(owner),
            start_new_session=True,  # a terminal's Ctrl-C reaches us, and we stop them in order
            preexec_fn=_die_with_parent,
        )
    finally:
        log_fh.close()


def stop_process(proc: subprocess.Popen | None, sig: int, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) + "\n"
    except OSError:
        return ""


def write_private(path: Path, text: str) -> None:
    """Create ``path`` readable by its owner only (mode 0600, whatever the umask), then fill it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
