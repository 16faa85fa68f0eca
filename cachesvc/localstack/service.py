"""``cachesvc serve`` in a subprocess against a local stack (benchmarks, tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from cachesvc.localstack.processes import StackError, free_port, tail
from cachesvc.localstack.stack import LocalStack


class ServiceProcess:
    """``cachesvc serve`` in a subprocess on a free port, against ``stack`` (benchmarks).

    Its environment is the stack's DSNs plus ``settings`` (``pool_size=4`` becomes
    ``CACHESVC_POOL_SIZE=4``); nothing of the caller's own ``CACHESVC_*`` leaks in.
    """

    def __init__(self, stack: LocalStack, log: Path, **settings) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
        env |= stack.env() | {"CACHESVC_PORT": str(self.port), "CACHESVC_LOG_FORMAT": "json"}
        env |= {f"CACHESVC_{k.upper()}": str(v) for k, v in settings.items()}
        self.env = env
        self.started = time.perf_counter()
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "cachesvc", "serve"], env=env,
                                         stdout=subprocess.DEVNULL, stderr=err)

    def wait_ready(self, timeout: float = 120) -> float:
        """Seconds from start until ``/readyz`` answered 200."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise StackError(f"service exited {self.proc.returncode}:\n{tail(self.log, 40)}")
            try:
                if urllib.request.urlopen(self.url + "/readyz", timeout=2).status == 200:
                    return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:  # a service that never became ready is not left running
                self.proc.kill()
                self.proc.wait()
                raise StackError(f"service not ready after {timeout}s:\n{tail(self.log, 40)}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then its exit code; one that does not stop in time is killed and reported."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise StackError(f"service did not stop within {timeout} s of SIGTERM; its log ends:\n{tail(self.log, 30)}") from None
