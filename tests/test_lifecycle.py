"""The service's lifecycle (cachesvc.api.context): whatever start-up step fails, and after a
normal stop, nothing is left open: no pool, no asyncio task, no database connection.

The service connects here as a login of its own, directly to PostgreSQL, so that
``pg_stat_activity`` shows exactly its connections (through PgBouncer, a client that closes
leaves PgBouncer's server connections open, by design). The same DSN serves as the read
replica's: the monitor finds it is no standby, but every pool and loop a replica brings runs.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid

import psycopg
import pytest
from starlette.testclient import TestClient

from cachesvc import api, roles
from cachesvc.api import context
from cachesvc.api.context import open_context
from cachesvc.localstack import DATABASE, SUPERUSER

LOGIN = "cachesvc_lifecycle"
# Every start-up step of open_context, in order (the normal start checks that it is complete).
STEPS = ("primary_pool", "replica", "features", "loops", "warm_up")
LOOPS = {"replica-monitor", "counter-flush", "features-warmup", "features-hot-keys", "features-replica-warmup", "features-rewarm"}
NOTHING_OPEN = {"open pools": [], "pending tasks": []}


class Injected(Exception):
    """The failure a test injects after a start-up step."""


@pytest.fixture(scope="module")
def login_url(stack) -> str:
    password = secrets.token_urlsafe(18)
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        roles.create_login(conn, LOGIN, "cache_app", password)
    return f"postgresql://{LOGIN}:{password}@127.0.0.1:{stack.pg_port}/{DATABASE}"


def settings_for(stack, login_url: str, **overrides):
    return stack.settings(
        database_url=login_url, read_database_url=login_url, pool_size=2, read_pool_size=2,
        flush_interval_s=0.2, startup_attempts=1, **overrides,
    )


@pytest.fixture
def settings(stack, login_url):
    return settings_for(stack, login_url)


@pytest.fixture
def pools(monkeypatch) -> list:
    """Every pool the context makes, to look at once the context is gone."""
    made: list = []

    def keeping(create):
        def wrapped(*groups):
            result = create(*groups)
            made.extend(p for p in (result if isinstance(result, tuple) else (result,)) if p is not None)
            return result
        return wrapped

    for name in ("create_pool", "create_read_pool", "create_check_pools"):
        monkeypatch.setattr(context, name, keeping(getattr(context, name)))
    return made


def left_open(pools: list) -> dict:
    """What a context that was left behind, seen from inside its event loop."""
    return {
        "open pools": [p.name for p in pools if not p.closed],
        "pending tasks": sorted(t.get_name() for t in asyncio.all_tasks() if t is not asyncio.current_task()),
    }


def connections(stack) -> list[tuple]:
    """The login's connections (application_name, state): once they are gone, or after 5 s."""
    deadline = time.monotonic() + 5
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT application_name, state FROM pg_stat_activity WHERE usename = %s", (LOGIN,)
            ).fetchall()
            if not rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def test_normal_start_runs_every_step_and_stop_leaves_nothing_open(stack, settings, pools, admin):
    seen: list[str] = []
    user, hot_key = uuid.uuid4(), f"lifecycle-{uuid.uuid4()}"

    async def run() -> tuple[set, dict]:
        async with open_context(settings, after_step=seen.append) as ctx:
            started = set(ctx.background.tasks)  # warm-up ends once ready; the others run until stopped
            # For the final flushes, which run once the loops have stopped and before the pools close.
            ctx.counters.miss(user, "chapter")
            ctx.features.hot_keys.record([hot_key])
            assert connections(stack), "the service's connections are not seen"
        return started, left_open(pools)

    started, left = asyncio.run(run())
    assert tuple(seen) == STEPS
    assert started == LOOPS
    assert len(pools) == 4  # the primary's, the replica's, and one per server for the lag checks
    assert left == NOTHING_OPEN
    assert connections(stack) == []
    assert admin.execute("SELECT misses FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone() == (1,)
    assert admin.execute("SELECT hits FROM feature_hot_keys WHERE entity_key = %s", (hot_key,)).fetchone() == (1,)


@pytest.mark.parametrize("step", STEPS)
def test_a_failure_after_any_start_up_step_leaves_nothing_open(stack, settings, pools, step):
    def after_step(name: str) -> None:
        if name == step:
            raise Injected(name)

    async def run() -> dict:
        with pytest.raises(Injected):
            async with open_context(settings, after_step=after_step):
                pytest.fail("started although a step failed")
        return left_open(pools)

    assert asyncio.run(run()) == NOTHING_OPEN
    assert pools, "no pool was made"
    assert connections(stack) == []


def test_an_unknown_feature_table_refuses_to_start_and_leaves_nothing_open(stack, login_url, pools):
    """A real failure of a late step (the catalog), after every pool has opened."""
    settings = settings_for(stack, login_url, features_tables="no_such_table")

    async def run() -> dict:
        with pytest.raises(context.CatalogError):
            async with open_context(settings):
                pytest.fail("started with an unknown feature table")
        return left_open(pools)

    assert asyncio.run(run()) == NOTHING_OPEN
    assert len(pools) == 4
    assert connections(stack) == []


def test_the_app_serves_from_its_context_and_closes_it_on_shutdown(stack, settings, tokens, admin):
    user = uuid.uuid4()
    with TestClient(api.create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        miss = client.get("/v1/cache/chapter/k", headers={"Authorization": f"Bearer {tokens(user)}"})
        assert miss.status_code == 404, miss.text
        ctx = client.app_state["ctx"]
    assert [p.name for p in (ctx.pool, ctx.read_pool, ctx.replica.primary, ctx.replica.replica) if not p.closed] == []
    assert [name for name, task in ctx.background.tasks.items() if not task.done()] == []
    assert connections(stack) == []
    assert admin.execute("SELECT misses FROM cache_access_stats WHERE user_id = %s", (user,)).fetchone() == (1,)
