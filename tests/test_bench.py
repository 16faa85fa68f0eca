"""The benchmark's own tools measure what they claim (the benchmark itself is not a test)."""

from __future__ import annotations

import asyncio
import py_compile
import uuid
from urllib.parse import urlsplit

from cachesvc.bench import loadgen
from cachesvc.migrations import PROJECT_ROOT


def test_open_and_closed_loop_generators(service, tokens):
    port = urlsplit(service.url).port
    user = uuid.uuid4()
    auth = {"Authorization": f"Bearer {tokens(user)}"}
    put = loadgen.build_request("PUT", "/v1/cache/chapter/bench", f"127.0.0.1:{port}", auth, b'{"content": 1}')
    get_hit = loadgen.build_request("GET", "/v1/cache/chapter/bench", f"127.0.0.1:{port}", auth)
    get_miss = loadgen.build_request("GET", "/v1/cache/chapter/none", f"127.0.0.1:{port}", auth)
    first = asyncio.run(loadgen.closed_loop("127.0.0.1", port, [put], 0.3, connections=1))
    assert first.errors == 0 and set(first.statuses) <= {200, 201}
    result = asyncio.run(loadgen.open_loop("127.0.0.1", port, [get_hit, get_miss], rate=100, duration=1.0, connections=4))
    assert result.errors == 0
    assert result.sent == 100 and len(result.latencies) == 100
    assert set(result.statuses) == {200, 404}
    summary = result.summary()
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["p999_ms"]
    assert 80 <= summary["rps"] <= 110


def test_locustfile_compiles():
    py_compile.compile(str(PROJECT_ROOT / "tests" / "load" / "locustfile.py"), doraise=True)
