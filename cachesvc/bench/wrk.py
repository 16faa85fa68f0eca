"""Closed-loop maximum throughput with wrk (a C load generator), when it is installed."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path


def wrk(port: int, requests: list[bytes], home: Path, connections: int, seconds: int) -> dict | None:
    """wrk cycling through (the first 500 of) ``requests``; None when wrk is not installed."""
    if not shutil.which("wrk"):
        return None
    lua = home / "requests.lua"
    entries = []
    for raw in requests[:500]:
        head, body = raw.split(b"\r\n\r\n", 1)
        lines = head.decode().split("\r\n")
        method, path, _ = lines[0].split(" ")
        headers = {k: v for k, v in (line.split(": ", 1) for line in lines[1:]) if k not in ("Host", "Content-Length")}
        entries.append((method, path, headers, body.decode()))
    lua.write_text(
        "local reqs = {}\n"
        + "".join(
            f"reqs[{i + 1}] = wrk.format({json.dumps(m)}, {json.dumps(p)}, {{"
            + ", ".join(f"[{json.dumps(k)}] = {json.dumps(v)}" for k, v in h.items())
            + f"}}, {json.dumps(b) if b else 'nil'})\n"
            for i, (m, p, h, b) in enumerate(entries)
        )
        + "local i = 0\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n"
        + "done = function(summary, latency, requests)\n"
        + "  io.write(string.format('JSON {\"requests\": %d, \"seconds\": %f, \"p50\": %f, \"p99\": %f, \"errors\": %d, \"non2xx\": %d}\\n',"
        + " summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,"
        + " summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, summary.errors.status))\n"
        + "end\n"
    )
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(lua), f"http://127.0.0.1:{port}"],
                         capture_output=True, text=True)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk failed: {out.stdout}{out.stderr}")
    data = json.loads(line[5:])
    return {"requests": data["requests"], "rps": round(data["requests"] / data["seconds"], 1), "p50_ms": round(data["p50"], 3),
            "p99_ms": round(data["p99"], 3), "errors": data["errors"], "non2xx": data["non2xx"]}
