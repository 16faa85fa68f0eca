"""clients/typescript (@cachesvc/client): its types against the live /openapi.json, the package
a consumer installs, and the client run with node against live services (nothing mocked:
faults are real ones, a rate-limited service, a service whose database work always times
out, a stopped service, a closed port).

The package is built once per module; each test runs one node script (tests/client_typescript/)
that prints ``ok``/``FAIL`` per check and ``N passed, M failed``.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

import httpx2
import pytest

from cachesvc import auth
from cachesvc.localstack.processes import free_port
from cachesvc.migrations import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "clients" / "typescript"
SCRIPTS = PROJECT_ROOT / "tests" / "client_typescript"
BIN = PACKAGE / "node_modules" / ".bin"
REGENERATE = "CACHESVC_URL=http://<service> npm run generate  (in clients/typescript)"


def run(argv: list[str], *, cwd: Path = PACKAGE, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=os.environ | (env or {}), capture_output=True, text=True, timeout=timeout)


def node_checks(script: str, *args: str, env: dict[str, str], expect: int, timeout: float = 180) -> str:
    """Run a node script of checks; all of them (``expect``) must pass. Returns its output."""
    result = run(["node", str(SCRIPTS / script), *args], cwd=SCRIPTS, env=env, timeout=timeout)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert f"{expect} passed, 0 failed" in result.stdout, out
    return out


@pytest.fixture(scope="module")
def built() -> Path:
    """The package built (`npm run build`: tsc into a clean clients/typescript/dist), once for the module."""
    assert shutil.which("node"), "node is not installed; scripts/bootstrap installs it"
    assert (BIN / "tsc").exists(), "npm packages missing in clients/typescript; scripts/bootstrap installs them (npm ci)"
    result = run(["npm", "run", "--silent", "build"])
    assert result.returncode == 0, result.stdout + result.stderr
    return PACKAGE / "dist"


def forged(user) -> str:
    """A well-formed token for ``user`` signed with a secret the service does not have."""
    return auth.mint("not-the-service-secret-" + uuid.uuid4().hex, sub=str(user))


def user_tokens(tokens, n: int) -> str:
    return json.dumps([tokens(uuid.uuid4()) for _ in range(n)])


# -- the types --------------------------------------------------------------------------------


def generate(tmp_path: Path, *source: str) -> str:
    out = tmp_path / f"schema-{uuid.uuid4().hex}.ts"
    result = run(["node", "scripts/generate-types.mjs", *source, "--out", str(out)])
    assert result.returncode == 0, result.stdout + result.stderr
    return out.read_text()


def test_committed_types_match_the_live_openapi(service, tmp_path):
    fresh = generate(tmp_path, "--url", service.url)
    committed = (PACKAGE / "src" / "schema.ts").read_text()
    if fresh != committed:
        diff = "".join(difflib.unified_diff(committed.splitlines(True), fresh.splitlines(True),
                                            "src/schema.ts (committed)", "from the live /openapi.json", n=2))
        pytest.fail(f"clients/typescript/src/schema.ts is out of date with the service's /openapi.json.\n"
                    f"Regenerate it with: {REGENERATE}, rebuild, and commit it.\n{diff[:6000]}")
    assert '"/v1/cache/{contentType}/{key}"' in committed and "CacheEntry" in committed


def test_generated_types_do_not_depend_on_the_deployment(service, tmp_path):
    """Feature tables found at start-up and CACHESVC_MAX_TTL_S are in the document, not the contract."""
    doc = httpx2.get(service.url + "/openapi.json", timeout=10).json()
    tables = {"type": "string", "enum": ["user_features", "item_stats"]}
    (param,) = [p for p in doc["paths"]["/v1/features/{entityKey}"]["get"]["parameters"] if p["name"] == "tables"]
    param["schema"]["items"] = dict(tables)
    doc["components"]["schemas"]["FeatureLookupRequest"]["properties"]["tables"]["anyOf"][0]["items"] = dict(tables)
    doc["components"]["schemas"]["PutEntry"]["properties"]["ttlSeconds"]["anyOf"][0]["maximum"] = 3600
    deployed = tmp_path / "deployed.json"
    deployed.write_text(json.dumps(doc))
    from_deployment = generate(tmp_path, "--file", str(deployed))
    assert "user_features" not in from_deployment
    assert from_deployment == generate(tmp_path, "--url", service.url)


def test_the_type_check_rejects_a_contract_violation(built, tmp_path):
    consumer = consumer_dir(tmp_path)
    result = run([str(BIN / "tsc"), "-p", "tsconfig.wrong.json"], cwd=consumer)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    for name in ("tokenCnt", "contnt", "'entry' does not exist", "'number' is not assignable"):
        assert name in out, f"{name!r} not reported:\n{out}"


# -- the package ------------------------------------------------------------------------------


def consumer_dir(tmp_path: Path) -> Path:
    """tests/client_typescript/consumer copied to tmp, with the package installed by name."""
    consumer = tmp_path / "consumer"
    shutil.copytree(SCRIPTS / "consumer", consumer)
    scope = consumer / "node_modules" / "@cachesvc"
    scope.mkdir(parents=True)
    (scope / "client").symlink_to(PACKAGE, target_is_directory=True)
    return consumer


def test_package_manifest_and_lock():
    manifest = json.loads((PACKAGE / "package.json").read_text())
    assert manifest["name"] == "@cachesvc/client" and manifest["type"] == "module"
    assert manifest["exports"]["."] == {"types": "./dist/index.d.ts", "import": "./dist/index.js"}
    assert (manifest["main"], manifest["types"]) == ("./dist/index.js", "./dist/index.d.ts")
    assert not manifest.get("dependencies") and not manifest.get("peerDependencies"), "no runtime dependencies"
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in manifest["devDependencies"].values()), "exact versions"
    assert "generate" in manifest["scripts"] and "build" in manifest["scripts"]
    lock = json.loads((PACKAGE / "package-lock.json").read_text())
    assert lock["lockfileVersion"] == 3 and lock["packages"][""]["devDependencies"] == manifest["devDependencies"]
    assert not lock["packages"][""].get("dependencies")
    for name, version in manifest["devDependencies"].items():
        assert lock["packages"][f"node_modules/{name}"]["version"] == version
        installed = json.loads((PACKAGE / "node_modules" / name / "package.json").read_text())["version"]
        assert installed == version, f"{name} {installed} installed, the lock says {version}: npm ci"


def test_built_package_imports_nothing_but_itself(built):
    """No runtime dependency and no Node.js built-in: it runs wherever fetch does (edge runtimes too)."""
    files = sorted(built.glob("*.js"))
    assert {"index.js", "client.js", "errors.js", "schema.js"} <= {f.name for f in files}
    assert (built / "index.d.ts").exists() and (built / "schema.d.ts").exists()
    for f in files:
        for spec in re.findall(r"""(?:\bfrom\s*|\bimport\s*\(?\s*)["']([^"']+)["']""", f.read_text()):
            assert spec.startswith("./") and spec.endswith(".js"), f"{f.name} imports {spec}"


@pytest.mark.parametrize("resolution", ["NodeNext", "Bundler"])
def test_a_consumer_imports_it_by_name(built, tmp_path, resolution):
    """Resolved through package.json `exports` (types and import), type-checked, then run."""
    consumer = consumer_dir(tmp_path)
    module = "NodeNext" if resolution == "NodeNext" else "ESNext"
    result = run([str(BIN / "tsc"), "-p", "tsconfig.json", "--module", module, "--moduleResolution", resolution], cwd=consumer)
    assert result.returncode == 0, result.stdout + result.stderr
    ran = run(["node", "out/ok.js"], cwd=consumer)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    # a connection refused on port 1, retried once: the package ran, and failed the typed way
    assert "resolved function 100 0 network_error - -" in ran.stdout, ran.stdout


# -- against the live service -----------------------------------------------------------------


def test_client_end_to_end(built, service, tokens):
    a, b = uuid.uuid4(), uuid.uuid4()
    env = {
        "CACHESVC_URL": service.url,
        "USER_A": str(a), "TOKEN_A": tokens(a),
        "USER_B": str(b), "TOKEN_B": tokens(b),
        "TOKEN_SERVICE": tokens(service=True),
        "TOKEN_A_EXPIRED": tokens(a, ttl_seconds=-30),
        "TOKEN_A_FORGED": forged(a),
    }
    node_checks("e2e.mjs", env=env, expect=25)


def test_similar_searches_the_users_own_entries(built, service, tokens):
    from cachesvc.settings import Settings

    a, b = uuid.uuid4(), uuid.uuid4()
    env = {"CACHESVC_URL": service.url, "TOKEN_A": tokens(a), "TOKEN_B": tokens(b),
           "EMBEDDING_DIM": str(Settings.from_env(service.env).semantic.embedding_dim)}
    node_checks("similar.mjs", env=env, expect=3)


def test_coalesced_gets(built, start_service, tokens):
    """200 concurrent gets: 2 lookups instead of 200 GETs (printed: requests and median time)."""
    unlimited = start_service(rate_limit_per_s=0)  # the uncoalesced baseline must not meet the rate limit
    a = uuid.uuid4()
    env = {"CACHESVC_URL": unlimited.url, "TOKEN_A": tokens(a), "TOKEN_B": tokens(uuid.uuid4()),
           "TOKEN_A_EXPIRED": tokens(a, ttl_seconds=-30)}
    out = node_checks("coalesce.mjs", env=env, expect=10)
    measure = json.loads(re.search(r"^MEASURE (.*)$", out, re.M).group(1))
    print(f"\ncoalescing, 200 concurrent gets (100 hits, 100 misses), median of 5 rounds: {json.dumps(measure)}")
    assert measure["coalesced"]["requests"] == 2 and measure["uncoalesced"]["requests"] == 200
    assert measure["duplicates"]["requests"] == 1


def test_retries_honour_retry_after_on_429(built, start_service, tokens):
    limited = start_service(rate_limit_per_s=1, rate_limit_burst=2)
    node_checks("faults.mjs", "rate_limited", env={"CACHESVC_URL": limited.url, "TOKENS": user_tokens(tokens, 4)}, expect=4)


def test_retries_on_503_and_never_for_erase(built, start_service, tokens):
    unavailable = start_service(request_timeout_s=0.001)  # every database request is past its budget: 503
    node_checks("faults.mjs", "unavailable", env={"CACHESVC_URL": unavailable.url, "TOKENS": user_tokens(tokens, 4)}, expect=4)


@contextlib.contextmanager
def stopped(pid: int):
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_timeouts_deadlines_and_network_errors(built, start_service, tokens):
    hung = start_service()
    env = {"CACHESVC_URL": hung.url, "CLOSED_URL": f"http://127.0.0.1:{free_port()}", "TOKENS": user_tokens(tokens, 5)}
    with stopped(hung.proc.pid):  # accepts connections (the kernel does), never answers
        node_checks("faults.mjs", "hung", env=env, expect=5)
