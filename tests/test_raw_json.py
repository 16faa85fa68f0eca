"""JSON that jsonb refuses (\\u0000, lone surrogates, numbers beyond numeric) is stored and served.

Bodies are sent as exact bytes, so the escapes on the wire are the ones named here.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from cachesvc import migrations
from cachesvc.cache.rawjson import jsonb_refuses
from tests.harness import acting_as, connect, http_client, running_service, scratch_database

NUL_BOTH = rb'{"content": {"text": "a\u0000b", "list": ["\u0000", 1]}, "metadata": {"a\u0000b": "x\u0000y"}}'
NUL_CONTENT = rb'{"content": "chapter one\u0000", "metadata": {"seed": 7}}'
NUL_METADATA_KEY = rb'{"content": {"plain": true}, "metadata": {"\u0000": 1}}'
ESCAPED_BACKSLASH = rb'{"content": "\\u0000 is six characters", "metadata": {"k": "\\\\u0000"}}'
SURROGATE_PAIR = rb'{"content": "\ud83d\ude00"}'
HUGE_NUMBER = rb'{"content": {"n": 1e200000}, "metadata": {"m": -1e-99999}}'
LONE_SURROGATE = rb'{"content": "cut in half: \ud83d"}'

# (body, content kept as text, metadata kept as text)
STORED = {
    "nul_both": (NUL_BOTH, True, True),
    "nul_content": (NUL_CONTENT, True, False),
    "nul_metadata_key": (NUL_METADATA_KEY, False, True),
    "escaped_backslash": (ESCAPED_BACKSLASH, False, False),
    "surrogate_pair": (SURROGATE_PAIR, False, False),
    "huge_number": (HUGE_NUMBER, True, True),
}


def headers(tokens, user: uuid.UUID) -> dict:
    return {"Authorization": f"Bearer {tokens(user)}", "Content-Type": "application/json"}


def expected(body: bytes) -> dict:
    sent = json.loads(body)
    return {"content": sent["content"], "metadata": sent.get("metadata", {})}


def served(entry: dict) -> dict:
    return {"content": entry["content"], "metadata": entry["metadata"]}


def stored_as_text(admin, user: uuid.UUID, key: str) -> tuple[bool, bool]:
    return admin.execute(
        "SELECT content_raw IS NOT NULL, metadata_raw IS NOT NULL FROM infinite_pages_cache_partitioned"
        " WHERE user_id = %s AND cache_key = %s",
        (user, key),
    ).fetchone()


@pytest.fixture(scope="module")
def uncoalesced(stack, tmp_path_factory):
    """A second service with read_lanes = 0: GET and lookup use their own statements."""
    with running_service(stack, tmp_path_factory.mktemp("uncoalesced") / "service.log", read_lanes="0") as live:
        yield live


@pytest.fixture(params=["coalesced", "uncoalesced"])
def base_url(request, service) -> str:
    return service.url if request.param == "coalesced" else request.getfixturevalue("uncoalesced").url


# -- the detector, against PostgreSQL's own verdict ---------------------------------------

TRICKY = [
    r'"a\u0000b"', r'"\\u0000"', r'"\\\u0000"', r'"\\\\u0000"', r'"\\\\\u0000"', r'"\u00000"', r'"\u0000"',
    r'{"\u0000": 1}', r'{"k\\": "\u0000"}', r'"\u00a0\u0001"', r'"\ud83d\ude00"', r'"\uD83D\uDE00"', r'"\ud800"',
    r'"\udc00"', r'"x\udc00y"', r'"\ud800\u0041"', r'"\ud800\ud800"', r'"\ud800\\udc00"', r'["\ud800", "\udc00"]',
    r'"\ud83d\ude00\udc00"', r'"\\\ud800"', r'"\\\\ud800"', r'"\\"', r'"no escapes at all"', r'"\n\t\"\/"',
]


@pytest.mark.parametrize("text", TRICKY)
def test_detector_agrees_with_jsonb(admin, text):
    try:
        admin.execute("SELECT %s::jsonb", (text,))
        refused = False
    except psycopg.DataError:
        refused = True
    assert jsonb_refuses(text) is refused


def test_detector_fast_path_and_exact_escapes():
    assert not jsonb_refuses('{"text": "' + "plain words " * 10000 + '"}')
    assert jsonb_refuses(r'"\\\u0000"')  # an escaped backslash, then a real \u0000
    assert not jsonb_refuses(r'"\\\\u0000"')  # two escaped backslashes, then the letters u0000
    assert jsonb_refuses(r'"\u00000"')  # \u0000 followed by the digit 0


# -- through the live service ------------------------------------------------------------


@pytest.mark.parametrize("case", list(STORED))
def test_put_then_every_read_gives_it_back(base_url, tokens, admin, case):
    body, content_as_text, metadata_as_text = STORED[case]
    user, key = uuid.uuid4(), f"raw-{case}"
    h = headers(tokens, user)
    with http_client(base_url) as http:
        put = http.put(f"/v1/cache/chapter/{key}", content=body, headers=h)
        assert put.status_code == 201, put.text
        assert served(put.json()) == expected(body)
        got = http.get(f"/v1/cache/chapter/{key}", headers=h)
        assert got.status_code == 200 and served(got.json()) == expected(body)
        lookup = http.post("/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": key}]}, headers=h)
        (result,) = lookup.json()["results"]
        assert result["hit"] and served(result["entry"]) == expected(body)
    assert stored_as_text(admin, user, key) == (content_as_text, metadata_as_text)


def test_huge_number_comes_back_as_sent(service, tokens):
    user = uuid.uuid4()
    with http_client(service.url) as http:
        assert http.put("/v1/cache/chapter/n", content=HUGE_NUMBER, headers=headers(tokens, user)).status_code == 201
        got = http.get("/v1/cache/chapter/n", headers=headers(tokens, user))
    assert b'{"n": 1e200000}' in got.content and b'{"m": -1e-99999}' in got.content


def test_lone_surrogate_is_refused_with_400_and_nothing_stored(service, tokens, admin):
    """msgspec refuses a lone surrogate escape as malformed JSON: a 400, never a 500."""
    user = uuid.uuid4()
    with http_client(service.url) as http:
        put = http.put("/v1/cache/chapter/half", content=LONE_SURROGATE, headers=headers(tokens, user))
    assert put.status_code == 400 and put.json()["error"]["code"] == "validation_error", put.text
    assert admin.execute(
        "SELECT count(*) FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)
    ).fetchone() == (0,)


def test_concurrent_coalesced_reads_each_get_their_own(service, tokens):
    users = [uuid.uuid4() for _ in range(6)]
    bodies = {u: json.dumps({"content": f"{u}\u0000end", "metadata": {"owner\u0000": str(u)}}).encode() for u in users}
    with http_client(service.url) as http:
        for u in users:
            assert http.put("/v1/cache/chapter/shared", content=bodies[u], headers=headers(tokens, u)).status_code == 201

        def read(u: uuid.UUID) -> tuple[uuid.UUID, dict]:
            return u, http.get("/v1/cache/chapter/shared", headers=headers(tokens, u)).json()

        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(read, users * 8))
    for u, entry in answers:
        assert served(entry) == expected(bodies[u])


def test_another_user_cannot_read_it(service, tokens, stack):
    owner, other = uuid.uuid4(), uuid.uuid4()
    with http_client(service.url) as http:
        assert http.put("/v1/cache/chapter/secret", content=NUL_BOTH, headers=headers(tokens, owner)).status_code == 201
        assert http.get("/v1/cache/chapter/secret", headers=headers(tokens, other)).status_code == 404
        lookup = http.post("/v1/cache/lookup", json={"items": [{"contentType": "chapter", "key": "secret"}]},
                           headers=headers(tokens, other))
        assert lookup.json()["results"][0]["hit"] is False
        acting = {"Authorization": f"Bearer {tokens(service=True)}", "X-Cache-User": str(other)}
        assert http.get("/v1/cache/chapter/secret", headers=acting).status_code == 404
    with connect(stack, "cachesvc_app") as app:
        with acting_as(app, other):
            assert app.execute("SELECT count(*) FROM infinite_pages_cache_partitioned WHERE content_raw IS NOT NULL"
                               " AND cache_key = 'secret'").fetchone() == (0,)
        with acting_as(app, owner):
            assert app.execute("SELECT count(*) FROM infinite_pages_cache_partitioned WHERE content_raw IS NOT NULL"
                               " AND cache_key = 'secret'").fetchone() == (1,)


def test_analytics_count_the_text_not_the_placeholder(service, tokens, admin):
    user = uuid.uuid4()
    big = json.dumps({"content": os.urandom(3000).hex() + "\u0000"}).encode()  # 6,000 characters, incompressible
    with http_client(service.url) as http:
        assert http.put("/v1/cache/chapter/big", content=big, headers=headers(tokens, user)).status_code == 201
    (content_bytes,) = admin.execute("SELECT content_bytes FROM user_cache_analytics WHERE user_id = %s", (user,)).fetchone()
    assert content_bytes >= 3000  # the placeholder 'null' would count 5


# -- the migration ------------------------------------------------------------------------


@pytest.fixture
def fresh_db(stack):
    with scratch_database(stack, "cachesvc_raw_json") as url:
        yield url


INSERT = """
INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, expires_at)
VALUES (%s, 'chapter', %s, '"kept"', now() + interval '1 hour')
"""


def test_migration_up_is_catalog_only_and_down_drops_what_it_cannot_hold(fresh_db):
    url = fresh_db
    migrations.upgrade(url, "0004")
    user = uuid.uuid4()
    files = "SELECT relname, relfilenode FROM pg_class WHERE relname LIKE 'infinite_pages_cache_y%%' ORDER BY 1"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(INSERT, (user, "plain"))
        before = conn.execute(files).fetchall()
    migrations.upgrade(url, "0005")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(files).fetchall() == before  # no partition was rewritten
        conn.execute(
            "INSERT INTO infinite_pages_cache_partitioned (user_id, content_type, cache_key, content, content_raw, expires_at)"
            " VALUES (%s, 'chapter', 'nul', 'null', %s, now() + interval '1 hour')",
            (user, r'"a\u0000b"'),
        )
        conn.execute("SELECT * FROM user_cache_analytics").fetchall()
    migrations.downgrade(url, "0004")
    with psycopg.connect(url, autocommit=True) as conn:
        keys = conn.execute("SELECT cache_key FROM infinite_pages_cache_partitioned WHERE user_id = %s", (user,)).fetchall()
        assert keys == [("plain",)]  # a miss, never the placeholder served as content
        assert conn.execute(
            "SELECT count(*) FROM pg_attribute WHERE attrelid = 'infinite_pages_cache_partitioned'::regclass"
            " AND attname IN ('content_raw', 'metadata_raw') AND NOT attisdropped"
        ).fetchone() == (0,)
        assert conn.execute("SELECT has_table_privilege('cache_monitor', 'user_cache_analytics', 'SELECT')").fetchone() == (True,)
    migrations.upgrade(url)
