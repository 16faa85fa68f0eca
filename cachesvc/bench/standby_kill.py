"""The standby-kill drill: how long do reads wait when the read replica's PostgreSQL dies?

GETs at ``--rate`` per second (open loop, latency from each request's scheduled time) through
a service reading from a hot standby; the standby's postmaster is killed (SIGKILL) ``--kill-at``
seconds in, its PgBouncer left running (so the service sees no refused connection, only
reads that never come back). Prints, as JSON, the latency before the kill, in the 1.5 s after
it, and after that, with the count of reads over 200 ms. Run several times and compare medians:

    python -m cachesvc.bench.standby_kill --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx2
import psycopg

from cachesvc import auth
from cachesvc.bench.loadgen import _read_response, build_request, percentile
from cachesvc.bench.report import say
from cachesvc.localstack import SUPERUSER, LocalStack
from cachesvc.localstack.processes import stop_process
from cachesvc.localstack.service import ServiceProcess

USERS = 50
WINDOW_S = 1.5


async def drive(port: int, requests: list[bytes], rate: int, seconds: float, kill_at: float, kill) -> list[tuple]:
    """(scheduled offset, latency, status) of every request; ``kill()`` once at ``kill_at``."""
    rows: list[tuple] = []
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(64):
        idle.put_nowait(await asyncio.open_connection("127.0.0.1", port))
    start = time.perf_counter()
    tasks: set[asyncio.Task] = set()

    async def one(request: bytes, at: float) -> None:
        reader, writer = await idle.get()
        try:
            writer.write(request)
            status = await _read_response(reader)
            rows.append((at - start, time.perf_counter() - at, status))
        finally:
            idle.put_nowait((reader, writer))

    killed = False
    for i in range(int(rate * seconds)):
        at = start + i / rate
        if (delay := at - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        if not killed and at - start >= kill_at:
            kill()
            killed = True
        task = asyncio.create_task(one(requests[i % len(requests)], at))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.wait(tasks, timeout=30)
    while not idle.empty():
        idle.get_nowait()[1].close()
    return rows


def once(rate: int, seconds: float, kill_at: float) -> dict:
    home = Path(tempfile.mkdtemp(prefix="cachesvc-kill-"))
    stack = LocalStack.throwaway(home)
    try:
        stack.start()
        stack.start_standby()
        users = [uuid.uuid4() for _ in range(USERS)]
        with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
            for user in users:
                conn.execute("INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content,"
                             " expires_at) VALUES (%s, 'chapter', 'k', '\"x\"', now() + interval '1 day')", (user,))
        stack.standby.wait_replayed(stack.postgres)
        service = ServiceProcess(stack, home / "service.log", rate_limit_per_s=0, features_warmup="false")
        try:
            service.wait_ready()
            deadline = time.monotonic() + 20
            while httpx2.get(service.url + "/readyz", timeout=5).json()["replica"]["state"] != "ok":
                if time.monotonic() > deadline:
                    raise RuntimeError("the replica never came into use")
                time.sleep(0.1)
            requests = [build_request("GET", "/v1/cache/chapter/k", f"127.0.0.1:{service.port}",
                                      {"Authorization": f"Bearer {auth.mint(stack.jwt_secret, sub=str(u))}"})
                        for u in users]
            rows = asyncio.run(drive(service.port, requests, rate, seconds, kill_at,
                                     lambda: stop_process(stack.standby.postgres.proc, signal.SIGKILL)))
        finally:
            service.stop()
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)

    def part(lo: float, hi: float) -> dict:
        ordered = sorted(latency for at, latency, _ in rows if lo <= at < hi)
        return {"reads": len(ordered), "p50_ms": round(percentile(ordered, 50) * 1000, 2),
                "p99_ms": round(percentile(ordered, 99) * 1000, 2), "max_ms": round(ordered[-1] * 1000, 2),
                "over_200ms": sum(1 for latency in ordered if latency > 0.2)}

    return {"errors": sum(1 for *_, status in rows if status != 200), "before": part(0, kill_at),
            "after_kill": part(kill_at, kill_at + WINDOW_S), "later": part(kill_at + WINDOW_S, seconds + 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cachesvc.bench.standby_kill", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--kill-at", type=float, default=1.5)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    runs = []
    for n in range(args.runs):
        say(f"run {n + 1}/{args.runs}")
        runs.append(once(args.rate, args.seconds, args.kill_at))
    window = [run["after_kill"] for run in runs]
    summary = {key: statistics.median(w[key] for w in window) for key in ("p99_ms", "max_ms", "over_200ms")}
    print(json.dumps({"runs": runs, "median_after_kill": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
