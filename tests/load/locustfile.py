"""Load-test profiles for any cachesvc deployment (run with Locust; not part of the test suite).

    pip install locust
    CACHESVC_JWT_SECRET=… locust -f tests/load/locustfile.py --host https://cache.example.com \\
        --headless --run-time 10m          # LOAD_PROFILE=steady (default) | spike | soak

Users are simulated app servers acting for many end users: each end user's token is minted
with the deployment's HS256 secret (CACHESVC_JWT_SECRET), or taken from CACHESVC_BENCH_TOKEN_FILE
(one token per line). Traffic: 80 % reads (GET, plus some batch lookups) with about 80 % hits,
20 % writes (PUT), like the service's own benchmark.

Profiles (LoadTestShape): steady = ramp to 300 req/s-equivalent users and hold; spike =
steady with a 5x burst for one minute; soak = steady for as long as --run-time.
"""

from __future__ import annotations

import os
import random
import time
import uuid

import jwt
from locust import HttpUser, LoadTestShape, between, task

END_USERS = int(os.environ.get("LOAD_END_USERS", "1000"))
KEYS = int(os.environ.get("LOAD_KEYS_PER_USER", "50"))
PROFILE = os.environ.get("LOAD_PROFILE", "steady")


def _tokens() -> list[tuple[str, str]]:
    path = os.environ.get("CACHESVC_BENCH_TOKEN_FILE")
    if path:
        tokens = [line.strip() for line in open(path) if line.strip()]
        return [(jwt.decode(t, options={"verify_signature": False})["sub"], t) for t in tokens]
    secret = os.environ["CACHESVC_JWT_SECRET"]
    now = int(time.time())
    out = []
    for n in range(END_USERS):
        sub = str(uuid.UUID(int=n + 1, version=4))
        claims = {"sub": sub, "aud": "authenticated", "role": "authenticated", "iat": now, "exp": now + 86400}
        out.append((sub, jwt.encode(claims, secret, algorithm="HS256")))
    return out


TOKENS = _tokens()


class AppServer(HttpUser):
    wait_time = between(0.05, 0.2)

    def _auth(self) -> dict:
        _, token = random.choice(TOKENS)
        return {"Authorization": f"Bearer {token}"}

    @task(14)
    def get_entry(self) -> None:
        key = f"key-{random.randint(1, KEYS)}" if random.random() < 0.8 else f"absent-{random.randint(1, 10**9)}"
        with self.client.get(f"/v1/cache/chapter/{key}", headers=self._auth(), name="GET /v1/cache/{type}/{key}",
                             catch_response=True) as res:
            if res.status_code in (200, 404):
                res.success()

    @task(2)
    def lookup(self) -> None:
        items = [{"contentType": "chapter", "key": f"key-{random.randint(1, KEYS)}"} for _ in range(10)]
        self.client.post("/v1/cache/lookup", json={"items": items}, headers=self._auth(), name="POST /v1/cache/lookup")

    @task(4)
    def put_entry(self) -> None:
        body = {"content": {"text": "Once upon a time " * 30}, "tokenCount": 1500, "costUsd": 0.02, "model": "load-test"}
        self.client.put(f"/v1/cache/chapter/key-{random.randint(1, KEYS)}", json=body, headers=self._auth(),
                        name="PUT /v1/cache/{type}/{key}")


class Profile(LoadTestShape):
    """steady: ramp 2 min to 60 users (~300 req/s) and hold; spike: a 5x minute at 5 min; soak: hold."""

    base_users = int(os.environ.get("LOAD_USERS", "60"))

    def tick(self):
        t = self.get_run_time()
        limit = self.runner.environment.parsed_options.run_time if self.runner and self.runner.environment.parsed_options else None
        if limit and t > limit:
            return None
        users = min(self.base_users, max(1, int(self.base_users * t / 120)))
        if PROFILE == "spike" and 300 <= t < 360:
            users = self.base_users * 5
        return users, max(1, self.base_users // 10)
