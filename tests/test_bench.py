"""The benchmark's own tools measure what they claim (the benchmark itself is not a test)."""

from __future__ import annotations

import asyncio
import py_compile
import subprocess
import sys
import time
import uuid
from urllib.parse import urlsplit

import httpx2

from cachesvc.bench import loadgen, run
from cachesvc.migrations import PROJECT_ROOT


SUMMARY_FIELDS = {"requests", "errors", "statuses", "rps", "p50_ms", "p99_ms", "p999_ms", "mean_ms", "target_rps", "target_met"}


def test_open_and_closed_loop_generators(service, tokens):
    """The generators send what they claim and report every figure; how fast the machine is
    belongs to the benchmark (its open loops report their rate target and whether it was met)."""
    port = urlsplit(service.url).port
    writer, reader = ({"Authorization": f"Bearer {tokens(uuid.uuid4())}"} for _ in range(2))  # a rate-limit bucket each
    put = loadgen.build_request("PUT", "/v1/cache/chapter/bench", f"127.0.0.1:{port}", writer, b'{"content": 1}')
    closed = asyncio.run(loadgen.closed_loop("127.0.0.1", port, [put], 0.5, connections=1))
    # As many PUTs as the machine answers in 0.5 s: past the user's burst they are refused (429).
    assert closed.errors == 0 and closed.statuses.get(201) == 1 and set(closed.statuses) <= {200, 201, 429}
    assert sum(closed.statuses.values()) == len(closed.latencies) and closed.summary()["target_met"] is None
    with httpx2.Client(base_url=service.url, timeout=30) as http:
        assert http.put("/v1/cache/chapter/bench", headers=reader, json={"content": 1}).status_code == 201
    get_hit = loadgen.build_request("GET", "/v1/cache/chapter/bench", f"127.0.0.1:{port}", reader)
    get_miss = loadgen.build_request("GET", "/v1/cache/chapter/none", f"127.0.0.1:{port}", reader)
    # 100 requests of one user, one more PUT: within the burst of 200 whatever the machine's speed
    result = asyncio.run(loadgen.open_loop("127.0.0.1", port, [get_hit, get_miss], rate=100, duration=1.0, connections=4))
    assert result.errors == 0
    assert result.sent == 100 and len(result.latencies) == 100
    assert set(result.statuses) == {200, 404} and sum(result.statuses.values()) == 100
    summary = result.summary()
    assert set(summary) == SUMMARY_FIELDS and summary["requests"] == 100
    assert 0 < summary["p50_ms"] <= summary["p99_ms"] <= summary["p999_ms"]
    assert 0 < summary["mean_ms"] and 0 < summary["rps"] <= 100 * 100 / 99  # 100 sent over at least 0.99 s
    assert summary["target_rps"] == 90.0 and isinstance(summary["target_met"], bool)


def test_an_open_loop_meets_its_target_only_at_its_rate_and_without_errors():
    kept = loadgen.Result(latencies=[0.001] * 95, duration=1.0, sent=95, rate=100)
    assert kept.summary()["target_met"] is True
    assert loadgen.Result(latencies=[0.001] * 89, duration=1.0, sent=89, rate=100).summary()["target_met"] is False
    assert loadgen.Result(latencies=[0.001] * 95, duration=1.0, sent=96, errors=1, rate=100).target_met() is False
    assert run.target_cell(kept.summary()) == "≥ 90 req/s: met"


def test_locustfile_compiles():
    py_compile.compile(str(PROJECT_ROOT / "tests" / "load" / "locustfile.py"), doraise=True)


def test_cpu_of_a_server_counts_its_ended_and_living_children():
    """cachesvc.bench.cpu: a PostgreSQL-like tree whose backends come and go is charged in full."""
    from cachesvc.bench import cpu

    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\n"
    parent = subprocess.Popen([sys.executable, "-c",
                               "import subprocess, sys, time\n"
                               f"subprocess.run([sys.executable, '-c', {burn!r}])\n"  # a child that ends, waited for
                               f"child = subprocess.Popen([sys.executable, '-c', {burn!r} + 'time.sleep(30)'])\n"
                               "print('ready', flush=True)\n"
                               "time.sleep(30)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        with cpu.measured({"server": parent.pid}) as used:
            assert parent.stdout.readline().strip() == "ready"
            time.sleep(0.5)  # the living child burns its 0.3 s meanwhile
        assert used["server"] >= 0.5, used  # both children's 0.3 s (minus clock-tick rounding)
        assert cpu.per_request(used, 10)["server"] == round(used["server"] * 100, 3)
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)])
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_scripts_bench_keeps_the_sections_other_benchmarks_own(tmp_path):
    from cachesvc.bench.run import kept_sections

    path = tmp_path / "BENCHMARKS.md"
    path.write_text("# Benchmarks\n\nold table\n\n<!-- semantic: scripts/bench-semantic -->\n## Semantic\n| x |\n"
                    "<!-- /semantic -->\ntrailing words\n")
    assert kept_sections(path) == "\n<!-- semantic: scripts/bench-semantic -->\n## Semantic\n| x |\n<!-- /semantic -->\n"
    assert kept_sections(tmp_path / "none.md") == ""


def test_several_runs_report_the_median_of_each_figure_and_the_majority_of_targets():
    from cachesvc.bench.run import median_of

    runs = [
        {"get_closed": {"rps": 100.0, "p50_ms": 3}, "get_open_1000": {"target_met": True, "rps": 990}, "machine": "a"},
        {"get_closed": {"rps": 300.0, "p50_ms": 1}, "get_open_1000": {"target_met": False, "rps": 700}, "machine": "b"},
        {"get_closed": {"rps": 200.0, "p50_ms": 2}, "get_open_1000": {"target_met": False, "rps": 800}, "machine": "c"},
    ]
    merged = median_of(runs)
    assert merged["get_closed"] == {"rps": 200.0, "p50_ms": 2}
    assert merged["get_open_1000"] == {"target_met": False, "rps": 800}
    assert merged["machine"] == "a"
    assert median_of(runs[:1]) is runs[0]
