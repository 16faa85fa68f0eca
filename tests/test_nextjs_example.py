"""examples/nextjs: the Next.js (App Router) example app, built and run against the live service.

Once per module: the client package is built (``npm run build`` in clients/typescript, which the
example depends on as ``file:../../clients/typescript``), then ``next build`` (with the service
token in the build's environment, so that a token that got bundled would show), then
``next start`` on a free port with ``CACHESVC_URL`` and ``CACHESVC_SERVICE_TOKEN`` pointing at the
session's service. Every request goes through Next.js to the real service; nothing is mocked.
The Next.js server is always stopped, whatever happened.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from cachesvc.localstack.processes import free_port
from cachesvc.migrations import PROJECT_ROOT
from tests.harness import as_service, http_client, wait_until

EXAMPLE = PROJECT_ROOT / "examples" / "nextjs"
CLIENT = PROJECT_ROOT / "clients" / "typescript"
NEXT = EXAMPLE / "node_modules" / "next" / "dist" / "bin" / "next"
TOKEN_ENV = "CACHESVC_SERVICE_TOKEN"


def run(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env or os.environ.copy(), capture_output=True, text=True, timeout=timeout)


def node_env(**extra: str) -> dict[str, str]:
    """The environment of the Next.js processes: this one's without any CACHESVC_* of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
    return env | {"NEXT_TELEMETRY_DISABLED": "1"} | extra


@dataclass
class NextApp:
    url: str
    token: str
    log: Path
    proc: subprocess.Popen

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@contextlib.contextmanager
def next_start(env: dict[str, str], log: Path) -> Iterator[NextApp]:
    """``next start`` on a free port, returned once it answers; always stopped on leaving."""
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(["node", str(NEXT), "start", "--port", str(port), "--hostname", "127.0.0.1"],
                                cwd=EXAMPLE, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    app = NextApp(f"http://127.0.0.1:{port}", env[TOKEN_ENV], log, proc)
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"next start exited {proc.returncode}:\n{app.log_tail()}")
            try:
                return httpx2.get(app.url + "/api/generations", timeout=5).status_code == 200
            except httpx2.TransportError:
                return False

        wait_until(answers, 60, error=lambda _: f"next start did not answer within 60 s:\n{app.log_tail()}",
                   interval=0.2)
        yield app
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of the ``next start`` this module started (it and any child of
    it), then SIGKILL if it is still there after 10 s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@pytest.fixture(scope="module")
def service_token(tokens) -> str:
    return tokens(service=True)


@pytest.fixture(scope="module")
def built(service, service_token) -> Path:
    """The client package built, then the example (``next build``), once for the module."""
    assert shutil.which("node"), "node is not installed; scripts/bootstrap installs it"
    version = run(["node", "--version"], cwd=EXAMPLE).stdout.strip()
    assert tuple(map(int, version.lstrip("v").split(".")[:2])) >= (20, 9), f"Next.js 16 needs Node.js >= 20.9, not {version}"
    assert (CLIENT / "node_modules" / ".bin" / "tsc").exists(), \
        "npm packages missing in clients/typescript; scripts/bootstrap installs them (npm ci)"
    assert NEXT.exists(), "npm packages missing in examples/nextjs; scripts/bootstrap installs them (npm ci)"
    linked = EXAMPLE / "node_modules" / "@cachesvc" / "client"
    assert linked.resolve() == CLIENT.resolve(), f"{linked} must link to clients/typescript (a file: dependency)"
    client = run(["npm", "run", "--silent", "build"], cwd=CLIENT)
    assert client.returncode == 0, client.stdout + client.stderr
    # The token and URL are in the build's environment on purpose: if any code inlined them at
    # build time (a NEXT_PUBLIC_ name, `env` in next.config), the bundles would hold them.
    started = time.monotonic()
    build = run(["node", str(NEXT), "build"], cwd=EXAMPLE, env=node_env(CACHESVC_URL=service.url, **{TOKEN_ENV: service_token}))
    assert build.returncode == 0, build.stdout + build.stderr
    print(f"\nnext build: {time.monotonic() - started:.1f} s")
    for route in ("/api/chapter/[id]", "/chapter/[id]"):
        assert re.search(rf"ƒ {re.escape(route)}\s*$", build.stdout, re.M), f"{route} must be dynamic:\n{build.stdout}"
    return EXAMPLE / ".next"


@pytest.fixture(scope="module")
def app(built, service, service_token, tmp_path_factory) -> Iterator[NextApp]:
    env = node_env(CACHESVC_URL=service.url, **{TOKEN_ENV: service_token})
    with next_start(env, tmp_path_factory.mktemp("nextjs") / "next.log") as running:
        yield running


def generations(app: NextApp) -> int:
    res = httpx2.get(app.url + "/api/generations", timeout=10)
    assert res.status_code == 200, res.text
    return res.json()["generations"]


def stored(service, tokens, user: uuid.UUID, chapter: str) -> dict:
    """The entry as the service has it for ``user`` (read with the service token, as the app does)."""
    key = urllib.parse.quote(f"demo/{chapter}", safe="")
    with http_client(service) as http:
        res = http.get(f"/v1/cache/chapter/{key}", headers=as_service(tokens, user))
    assert res.status_code == 200, res.text
    return res.json()


def field(page: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>(.*?)</', page, re.S)
    assert match, f"no #{element_id} in the page:\n{page[:3000]}"
    return html.unescape(match.group(1))


def test_the_page_renders_generated_content_then_serves_it_from_the_cache(app, service, tokens):
    user = uuid.uuid4()
    before = generations(app)
    with http_client(app.url) as http:
        first = http.get("/chapter/intro", params={"user": str(user)})
        assert first.status_code == 200, f"{first.text[:2000]}\n{app.log_tail()}"
        text = field(first.text, "chapter-text")
        assert text.startswith("Chapter intro: ") and len(text.split()) > 20, text
        assert field(first.text, "generated-here") == "yes"
        generation = field(first.text, "generation")
        assert generations(app) == before + 1

        # It is in the cache, under this user, with what the page showed.
        entry = stored(service, tokens, user, "intro")
        assert entry["content"] == {"text": text, "generation": int(generation)}
        assert entry["model"] == "fake-llm-1" and entry["tokenCount"] > 0

        second = http.get("/chapter/intro", headers={"x-demo-user": str(user)})  # the header names the user too
        assert second.status_code == 200, second.text[:2000]
        assert field(second.text, "chapter-text") == text
        assert field(second.text, "generation") == generation
        assert field(second.text, "generated-here") == "no (from the cache)"
        assert generations(app) == before + 1, "the second request must not generate"

        # Another user has a cache of their own: the same chapter is generated for them.
        other = http.get("/chapter/intro", params={"user": str(uuid.uuid4())})
        assert other.status_code == 200 and field(other.text, "generated-here") == "yes"
        assert generations(app) == before + 2

        for page in (first, second, other):
            assert app.token not in page.text and TOKEN_ENV not in page.text


def test_the_page_and_route_refuse_a_request_without_a_user(app):
    with http_client(app.url) as http:
        page = http.get("/chapter/intro")
        assert page.status_code == 200 and "name the demo user" in page.text
        api = http.get("/api/chapter/intro", params={"user": "not-a-uuid"})
        assert api.status_code == 400 and "name the demo user" in api.json()["error"]


def test_a_burst_of_identical_requests_generates_once(app, service, tokens):
    user, chapter, n = uuid.uuid4(), f"burst-{uuid.uuid4().hex[:8]}", 10
    before = generations(app)
    start = threading.Barrier(n)

    def request(_: int) -> httpx2.Response:
        with http_client(app.url, timeout=30) as http:
            start.wait(10)
            return http.get(f"/api/chapter/{chapter}", params={"user": str(user)})

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        answers = list(pool.map(request, range(n)))
    took = time.monotonic() - started
    assert all(a.status_code == 200 for a in answers), [(a.status_code, a.text[:300]) for a in answers]
    bodies = [a.json() for a in answers]
    assert sum(b["generatedHere"] for b in bodies) == 1, bodies
    assert len({(b["text"], b["generation"]) for b in bodies}) == 1, "every request must get the one generation"
    assert generations(app) == before + 1
    entry = stored(service, tokens, user, chapter)
    assert entry["content"] == {"text": bodies[0]["text"], "generation": bodies[0]["generation"]}
    assert all(b["key"] == f"demo/{chapter}" for b in bodies)
    print(f"\n{n} concurrent requests of one new chapter: 1 generation, {took * 1000:.0f} ms in all")


def test_the_service_token_never_reaches_the_browser(built, app):
    static = [p for p in (built / "static").rglob("*") if p.is_file()]
    scripts = [p for p in static if p.suffix == ".js"]
    assert len(scripts) >= 3, f"expected the client bundles under .next/static, found {static}"
    token, name = app.token.encode(), TOKEN_ENV.encode()
    for path in static:
        data = path.read_bytes()
        assert token not in data, f"the service token is in {path.relative_to(EXAMPLE)}"
        assert name not in data, f"{TOKEN_ENV} is named in {path.relative_to(EXAMPLE)}"
    # The build had the token in its environment: no built file holds it, server ones included.
    for path in (p for p in built.rglob("*") if p.is_file()):
        assert token not in path.read_bytes(), f"the service token was inlined into {path.relative_to(EXAMPLE)}"
    # The search is not vacuous: the server bundles do read the variable (at request time).
    server = [p for p in (built / "server").rglob("*.js") if name in p.read_bytes()]
    assert server, f"{TOKEN_ENV} should be read by the server bundle"
    # What a browser receives: the HTML and the RSC payload of a page.
    with http_client(app.url) as http:
        user = str(uuid.uuid4())
        for headers in ({}, {"RSC": "1"}):
            res = http.get("/chapter/leak-check", params={"user": user}, headers=headers, follow_redirects=True)
            assert res.status_code == 200, res.text[:2000]
            assert "Chapter leak-check: " in res.text
            assert app.token not in res.text and TOKEN_ENV not in res.text


LEAKING_PAGE = '''"use client";
import { cacheFor } from "@/lib/cache";

export default function Leak() {
  return <p>{typeof cacheFor}</p>;
}
'''


def test_a_client_component_that_imports_the_cache_module_fails_the_build(built):
    """lib/cache.ts says `import "server-only"`: a client component importing it is a build error.

    Built from a copy of the example inside its .next/ (ignored by git, emptied by every build),
    so that the example itself is never changed; the copy's bundler root is the repository's.
    """
    copy = built / "leak-check"
    shutil.rmtree(copy, ignore_errors=True)
    try:
        for part in ("app", "lib"):
            shutil.copytree(EXAMPLE / part, copy / part)
        for name in ("package.json", "tsconfig.json"):
            shutil.copy(EXAMPLE / name, copy / name)
        (copy / "node_modules").symlink_to(EXAMPLE / "node_modules", target_is_directory=True)
        root = os.path.relpath(PROJECT_ROOT, copy)
        (copy / "next.config.mjs").write_text(
            'import { fileURLToPath } from "node:url";\n'
            f'const root = fileURLToPath(new URL("{root}/", import.meta.url));\n'
            "export default { turbopack: { root }, outputFileTracingRoot: root, typescript: { ignoreBuildErrors: true } };\n")
        (copy / "app" / "leak").mkdir()
        (copy / "app" / "leak" / "page.tsx").write_text(LEAKING_PAGE)
        result = run(["node", str(NEXT), "build"], cwd=copy, env=node_env())
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        assert "'server-only' cannot be imported from a Client Component module" in out, out
    finally:
        shutil.rmtree(copy, ignore_errors=True)
