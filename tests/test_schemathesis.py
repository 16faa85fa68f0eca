"""The contract is the behaviour: schemathesis generates requests from the live /openapi.json,
valid and invalid, sends them to the live service and runs every check on each answer
(no server error, status and headers documented, body matching its schema, invalid input
refused, valid input accepted, auth enforced), as a user and as a service acting for one."""

from __future__ import annotations

import uuid

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from cachesvc.api import openapi
from cachesvc.api.identity import UUID_RE
from cachesvc.settings import Settings
from tests.harness import create_table, drop_tables, maintainer, running_service

EXAMPLES = 25  # per operation and phase: the whole module stays well under a minute

# The document as the service builds it; test_the_live_document_is_the_one_explored checks it is
# the one /openapi.json serves (schemathesis's fixture-loaded schemas need a pytest it predates).
FEATURE_TABLE = "st_profiles"
DOCUMENT = openapi.document(Settings().max_ttl_s, [FEATURE_TABLE])
schema = schemathesis.openapi.from_dict(DOCUMENT)  # every phase: examples, coverage, fuzzing
# The reads that take X-Consistency-Token skip the coverage phase: its "all required and one
# optional property" scenario sends the header as "0" and counts that as schema-valid although it
# does not match the header's pattern (^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$), so the service's
# 400 is reported as a valid request refused. Its other scenarios, and the other phases, run.
CONSISTENCY_READS = ["getEntry", "lookupEntries", "similarEntries"]
schema_without_coverage = schemathesis.openapi.from_dict(DOCUMENT)
schema_without_coverage.config.phases.update(phases=["examples", "fuzzing"])
explore = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                   suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def feature_table(stack):
    with maintainer(stack) as conn:
        create_table(conn, FEATURE_TABLE, "entity_key text PRIMARY KEY, score double precision, tier text",
                     [(f"e{i}", i / 10, "gold") for i in range(20)])
    yield FEATURE_TABLE
    with maintainer(stack) as conn:
        drop_tables(conn, FEATURE_TABLE)


@pytest.fixture(scope="module")
def live(stack, feature_table, tmp_path_factory):
    """A service of its own: no rate limit (hundreds of requests a second are the point here), and
    lease requests that wait a moment at most (a generated user may ask twice for one key)."""
    with running_service(stack, tmp_path_factory.mktemp("schemathesis") / "service.log",
                         rate_limit_per_s="0", lease_max_wait_ms="100", features_tables=feature_table) as service:
        yield service


def test_the_live_document_is_the_one_explored(live):
    import httpx2

    assert httpx2.get(f"{live.url}/openapi.json").json() == DOCUMENT


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def as_a_user(case, live, tokens) -> None:
    user = uuid.uuid4()
    if UUID_RE.fullmatch((case.headers or {}).get("X-Cache-User", "")):
        case.headers["X-Cache-User"] = str(user)  # a user token may name only itself; others are 403
    case.call_and_validate(base_url=live.url, headers=bearer(tokens(user)))


def as_a_service_acting_for_a_user(case, live, tokens) -> None:
    headers = bearer(tokens(service=True))
    if "X-Cache-User" not in (case.headers or {}):  # generated ones, valid or not, are sent as they are
        headers["X-Cache-User"] = str(uuid.uuid4())
    case.call_and_validate(base_url=live.url, headers=headers)


@schema.include(path_regex="^/v1/(cache|leases)").exclude(operation_id=CONSISTENCY_READS).parametrize()
@explore
def test_cache_api_as_a_user(case, live, tokens):
    as_a_user(case, live, tokens)


@schema_without_coverage.include(operation_id=CONSISTENCY_READS).parametrize()
@explore
def test_cache_reads_as_a_user(case, live, tokens):
    as_a_user(case, live, tokens)


@schema.include(path_regex="^/v1/(cache|leases)").exclude(operation_id=CONSISTENCY_READS).parametrize()
@explore
def test_cache_api_as_a_service_acting_for_a_user(case, live, tokens):
    as_a_service_acting_for_a_user(case, live, tokens)


@schema_without_coverage.include(operation_id=CONSISTENCY_READS).parametrize()
@explore
def test_cache_reads_as_a_service_acting_for_a_user(case, live, tokens):
    as_a_service_acting_for_a_user(case, live, tokens)


@schema.include(path_regex="^/v1/features").parametrize()
@explore
def test_feature_api_as_a_service(case, live, tokens):
    case.call_and_validate(base_url=live.url, headers=bearer(tokens(service=True)))


@schema.exclude(path_regex="^/v1/").parametrize()
@explore
def test_operational_routes(case, live):
    case.call_and_validate(base_url=live.url)
