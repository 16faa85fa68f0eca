"""A small open-loop HTTP/1.1 load generator for the benchmarks.

Requests are sent on a fixed schedule (rate per second) regardless of how fast answers come
back, over a bounded set of keep-alive connections; each latency is measured from the
request's *scheduled* time, so a stall shows up in the percentiles instead of silently
lowering the rate (no coordinated omission). Requests are prebuilt bytes, so the generator
itself costs little CPU next to the service it measures.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

RATE_KEPT = 0.9  # an open loop's target: answers at no less than this share of the scheduled rate


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    duration: float = 0.0
    sent: int = 0
    rate: float | None = None  # the open loop's schedule, requests per second

    def percentile(self, p: float) -> float:
        return percentile(sorted(self.latencies), p)

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.duration if self.duration else 0.0

    @property
    def target_rps(self) -> float | None:
        return None if self.rate is None else RATE_KEPT * self.rate

    def target_met(self) -> bool | None:
        """Did the service keep the schedule, without errors (None: a closed loop has no target)?"""
        target = self.target_rps
        return None if target is None else self.errors == 0 and self.throughput >= target

    def summary(self) -> dict:
        return {
            "requests": len(self.latencies),
            "errors": self.errors,
            "statuses": dict(sorted(self.statuses.items())),
            "rps": round(self.throughput, 1),
            "p50_ms": round(self.percentile(50) * 1000, 3),
            "p99_ms": round(self.percentile(99) * 1000, 3),
            "p999_ms": round(self.percentile(99.9) * 1000, 3),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 3) if self.latencies else None,
            "target_rps": None if self.target_rps is None else round(self.target_rps, 1),
            "target_met": self.target_met(),
        }


def percentile(ordered: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100) of samples sorted ascending; NaN when there are none."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def build_request(method: str, path: str, host: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("PUT", "POST"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    if length:
        await reader.readexactly(length)
    return status


async def open_loop(
    host: str, port: int, requests: Sequence[bytes], rate: float, duration: float, connections: int = 64, seed: int = 1
) -> Result:
    """Send ``rate`` requests per second for ``duration`` seconds, drawn at random from ``requests``."""
    rng = random.Random(seed)
    result = Result(rate=rate)
    idle: asyncio.Queue = asyncio.Queue()
    for _ in range(connections):
        idle.put_nowait(await asyncio.open_connection(host, port))
    total = int(rate * duration)
    pending: set[asyncio.Task] = set()

    async def one(request: bytes, scheduled: float) -> None:
        conn = await idle.get()
        reader, writer = conn
        try:
            writer.write(request)
            status = await _read_response(reader)
            result.latencies.append(time.perf_counter() - scheduled)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            idle.put_nowait(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
            writer.close()
            idle.put_nowait(await asyncio.open_connection(host, port))

    start = time.perf_counter()
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(requests[rng.randrange(len(requests))], scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
        result.sent += 1
    if pending:
        await asyncio.wait(pending, timeout=30)
    result.duration = time.perf_counter() - start
    while not idle.empty():
        _, writer = idle.get_nowait()
        writer.close()
    return result


async def closed_loop(
    host: str, port: int, requests: Sequence[bytes], duration: float, connections: int = 32, seed: int = 1
) -> Result:
    """Each connection sends its next request as soon as the previous answer arrives."""
    rng = random.Random(seed)
    result = Result()
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(requests[rng.randrange(len(requests))])
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    result.duration = time.perf_counter() - start
    return result
