"""Run bench/overhead.mjs against a throwaway stack and service (the test harness's).

From the repository root, after scripts/bootstrap:

    .venv/bin/python examples/nextjs/bench/run.py [--n 2000 --concurrency 200 --rounds 10 --burst 50]

It starts a fresh PostgreSQL + PgBouncer on free ports (migrated, as the test suite does), one
`cachesvc serve` on them without rate limiting (otherwise the sequential runs meet the per-user
bucket), builds the client package, runs the node script with a service token acting for a
fresh user, prints its report, and stops everything. Extra arguments go to the node script.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent
ROOT = EXAMPLE.parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import running_service, throwaway_stack, token_maker  # noqa: E402


def main(argv: list[str]) -> int:
    build = subprocess.run(["npm", "run", "--silent", "build"], cwd=ROOT / "clients" / "typescript")
    if build.returncode != 0:
        return build.returncode
    with tempfile.TemporaryDirectory(prefix="cachesvc-bench-") as tmp, throwaway_stack() as stack, \
            running_service(stack, Path(tmp) / "service.log", rate_limit_per_s=0) as service:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CACHESVC_")}
        env |= {"CACHESVC_URL": service.url, "CACHESVC_SERVICE_TOKEN": token_maker(stack)(service=True),
                "BENCH_USER": str(uuid.uuid4())}
        return subprocess.run(["node", str(HERE / "overhead.mjs"), *argv], cwd=EXAMPLE, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
