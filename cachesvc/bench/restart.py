"""The first feature lookup after a PostgreSQL restart, against the warm median.

Target: the first request takes at most ``TARGET_X`` times the warm p50. PostgreSQL is
stopped (fast shutdown) and started again, so its shared buffers are empty (the OS page
cache keeps the files: dropping it would disturb the whole machine), in two cases:

- ``kept``: the service keeps running through the restart, and the request is sent the moment
  PostgreSQL accepts connections again. Its connections to PgBouncer live on; PgBouncer's
  to PostgreSQL are new (a backend forked and authenticated on the request's path, its
  catalog caches empty), and the service has not yet seen the restart.
- ``kept_rewarmed``: the same, but the request is sent once the service has seen the restart
  and warmed the tables up again (``/readyz``'s ``features.restart.rewarms`` went up; at most
  ``READY_S``): what every request after the first second or so meets.
- ``started``: the service is started after PostgreSQL and asked once ``/readyz`` answers
  200 (warm-up done): a deployment that restarts both. One not ready within ``READY_S`` is
  a missed target, with what ``/readyz`` said.

Each request is timed alone, on an HTTP connection already open (as an application's
keep-alive connection); the warm p50 is of such requests to the warm service, just before
the restart.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx2

from cachesvc.bench import loadgen
from cachesvc.localstack import LocalStack, ServiceProcess

TARGET_X = 2.0
WARM_REQUESTS = 200
AFTER_REQUESTS = 50
READY_S = 60.0


def timed(client: httpx2.Client, paths: list[str]) -> tuple[list[float], list[int]]:
    """Milliseconds of each GET of ``paths``, one at a time, and the statuses."""
    latencies, statuses = [], []
    for path in paths:
        start = time.perf_counter()
        status = client.get(path).status_code
        latencies.append((time.perf_counter() - start) * 1000)
        statuses.append(status)
    return latencies, statuses


def warm_p50(service: ServiceProcess, paths: list[str], headers: dict[str, str]) -> float:
    with httpx2.Client(base_url=service.url, headers=headers, timeout=30) as client:
        latencies, statuses = timed(client, paths[:WARM_REQUESTS])
    if set(statuses) != {200}:
        raise RuntimeError(f"warm feature lookups answered {sorted(set(statuses))}")
    return loadgen.percentile(sorted(latencies), 50)


def first_request(service: ServiceProcess, paths: list[str], headers: dict[str, str], warm_ms: float,
                  before: Callable[[], None] = lambda: None) -> dict:
    """``before()`` (the restart), then the first request and the next ones, on a connection
    opened before it (``/healthz`` asks nothing of the database)."""
    with httpx2.Client(base_url=service.url, headers=headers, timeout=30) as client:
        client.get("/healthz").raise_for_status()
        before()
        latencies, statuses = timed(client, paths[: AFTER_REQUESTS + 1])
    first = latencies[0]
    return {
        "first_ms": round(first, 3), "first_status": statuses[0], "warm_p50_ms": round(warm_ms, 3),
        "x_warm_p50": round(first / warm_ms, 2), "next_p50_ms": round(loadgen.percentile(sorted(latencies[1:]), 50), 3),
        "errors": sum(s != 200 for s in statuses), "target_x": TARGET_X,
        "target_met": statuses[0] == 200 and first <= TARGET_X * warm_ms,
    }


def restart_postgres(stack: LocalStack) -> None:
    stack.postgres.stop()
    stack.postgres.start()


def wait_ready(service: ServiceProcess) -> str | None:
    """None once ``/readyz`` answers 200; what it said last if it does not within ``READY_S``."""
    deadline = time.monotonic() + READY_S
    said = "no answer"
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            return f"the service exited with {service.proc.returncode}"
        try:
            res = httpx2.get(service.url + "/readyz", timeout=5)
        except httpx2.TransportError as exc:
            said = f"no answer: {exc}"
        else:
            if res.status_code == 200:
                return None
            said = res.text
        time.sleep(0.05)
    return f"not ready after {READY_S:g} s; /readyz said: {said}"


def rewarms(service: ServiceProcess) -> int:
    return httpx2.get(service.url + "/readyz", timeout=5).json()["features"]["restart"]["rewarms"]


def restart_and_wait_rewarmed(stack: LocalStack, service: ServiceProcess, done: dict) -> None:
    """Restart PostgreSQL, then wait for the service's warm-up after it; ``done["rewarmed_after_s"]``."""
    seen = rewarms(service)
    restart_postgres(stack)
    began = time.perf_counter()
    while rewarms(service) <= seen:
        if time.perf_counter() - began > READY_S:
            raise RuntimeError(f"the service did not warm up again within {READY_S:g} s of a restart")
        time.sleep(0.05)
    done["rewarmed_after_s"] = round(time.perf_counter() - began, 2)


def after_restart(stack: LocalStack, service: ServiceProcess, start: Callable[[], ServiceProcess],
                  paths: list[str], headers: dict[str, str]) -> tuple[dict, ServiceProcess | None]:
    """Both cases (module docstring), by name; and the service running at the end (``start()``'s,
    or None if it did not get ready: ``service`` is stopped on the way)."""
    warm_ms = warm_p50(service, paths, headers)
    later = paths[WARM_REQUESTS:]  # keys the warm requests did not ask for
    results = {"kept": first_request(service, later, headers, warm_ms, before=lambda: restart_postgres(stack))}
    later = later[AFTER_REQUESTS + 1:]
    done: dict = {}
    results["kept_rewarmed"] = first_request(service, later, headers, warm_ms,
                                             before=lambda: restart_and_wait_rewarmed(stack, service, done)) | done
    later = later[AFTER_REQUESTS + 1:]
    service.stop()
    restart_postgres(stack)
    began = time.perf_counter()
    fresh = start()
    trouble = wait_ready(fresh)  # warm-up done, and its probe passed
    if trouble is not None:
        fresh.stop()
        results["started"] = {"error": trouble, "warm_p50_ms": round(warm_ms, 3), "target_x": TARGET_X, "target_met": False}
        return results, None
    ready_s = time.perf_counter() - began
    results["started"] = first_request(fresh, later, headers, warm_ms) | {"ready_after_s": round(ready_s, 2)}
    return results, fresh
