"""The HTTP edge against the live service: what URL clients do to keys, input that must be a
400 (never a 500, never stored), and the headers and media types the contract names."""

from __future__ import annotations

from http.client import HTTPConnection
import json
import shutil
import subprocess
import urllib.parse
import uuid

import jsonschema_rs
import pytest

from cachesvc import keys
from cachesvc.cache.models import MAX_COST_USD
from cachesvc.db.lsn import LSN_RE


def user_headers(tokens, user) -> dict:
    return {"Authorization": f"Bearer {tokens(user)}"}


def raw(service, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """A request sent byte for byte: no client normalises its path or adds headers."""
    url = urllib.parse.urlsplit(service.url)
    conn = HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        res = conn.getresponse()
        return res.status, {k.lower(): v for k, v in res.getheaders()}, res.read()
    finally:
        conn.close()


def stored(admin, user) -> list[tuple[str, str]]:
    rows = admin.execute(
        "SELECT content_type, cache_key FROM infinite_pages_cache_partitioned WHERE user_id = %s ORDER BY 1, 2", (user,)
    )
    return [tuple(r) for r in rows]


@pytest.fixture
def victim(http, tokens, admin):
    """A user with three entries, and their token's headers."""
    user = uuid.uuid4()
    h = user_headers(tokens, user)
    for key in ("story-1", "story-1/ch-1", "story-1/ch-2"):
        assert http.put(f"/v1/cache/chapter/{urllib.parse.quote(key, safe='')}", json={"content": key}, headers=h).status_code == 201
    before = stored(admin, user)
    assert len(before) == 3
    return user, h, before


# -- keys: one rule, read the same way by Python, the JSON Schema validator and JavaScript ----

GOOD_KEYS = ["a", "story-42/ch-1", "a..b", "...", "a/.../b", "%2e%2e%2e", "a/.x", "ä😀", "a//b", "/", "x%2", "a\u00a0b"]
BAD_KEYS = [".", "..", "a/..", "../a", "a/./b", "a\\..", "%2e", "%2E%2e", ".%2e", "a/%2e/b", "chapter\n", "a\x00b",
            "a\x7f", "a\x85", "\t", "", "k" * 513]


def test_the_key_rule_reads_the_same_in_python_json_schema_and_ecmascript():
    validator = jsonschema_rs.validator_for(
        {"type": "string", "minLength": 1, "maxLength": keys.MAX_LENGTH, "pattern": keys.PATTERN}
    )
    for key in GOOD_KEYS:
        assert keys.is_valid(key) and validator.is_valid(key), key
    for key in BAD_KEYS:
        assert not keys.is_valid(key) and not validator.is_valid(key), key
    assert shutil.which("node"), "node is not installed; scripts/bootstrap installs it"
    script = """
        const [pattern, good, bad] = process.argv.slice(1);
        const wrong = [];
        for (const flags of ["", "u"]) {
          const re = new RegExp(pattern, flags);
          for (const k of JSON.parse(good)) if (!re.test(k)) wrong.push([flags, k]);
          for (const k of JSON.parse(bad)) if (k.length > 0 && k.length <= 512 && re.test(k)) wrong.push([flags, k]);
        }
        console.log(JSON.stringify(wrong));
    """
    result = subprocess.run(["node", "-e", script, keys.PATTERN, json.dumps(GOOD_KEYS), json.dumps(BAD_KEYS)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


# -- item 1: a key ".." must never become the erase endpoint ---------------------------------


def test_node_fetch_of_dot_keys_deletes_nothing(service, victim, admin):
    """The client pattern of docs/api.md: fetch() removes dot segments, then follows redirects."""
    user, h, before = victim
    script = """
        const [base, auth] = process.argv.slice(1);
        const out = [];
        for (const key of ["..", ".", "%2e%2e", "%2E", "story-1/..", "story-1/."]) {
          for (const method of key.startsWith("story-1") ? ["DELETE", "GET"] : ["DELETE", "GET", "PUT"]) {
            const init = {method, headers: {Authorization: auth, "Content-Type": "application/json"}};
            if (method === "PUT") init.body = JSON.stringify({content: "x"});
            const res = await fetch(base + "/v1/cache/chapter/" + key, init);
            out.push([method, key, res.status, res.redirected, await res.text()]);
          }
        }
        console.log(JSON.stringify(out));
    """
    result = subprocess.run(["node", "--input-type=module", "-e", script, service.url, h["Authorization"]],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for method, key, status, redirected, text in json.loads(result.stdout):
        assert not redirected, (method, key, status)
        assert status in (400, 404, 405), (method, key, status, text)
    assert stored(admin, user) == before


@pytest.mark.parametrize("key", ["..", ".", "%2e%2e", "%2E", ".%2e", "a/..", "a/./b", "a%2F..", "a%5C..", "..%2Fb", "%252e%252e"])
def test_raw_dot_keys_are_400_on_every_route(service, tokens, victim, admin, key):
    user, h, before = victim
    json_headers = h | {"Content-Type": "application/json"}
    for method in ("DELETE", "GET", "PUT"):
        status, _, body = raw(service, method, f"/v1/cache/chapter/{key}", b'{"content": 1}', json_headers)
        assert status == 400, (method, key, status, body)
        error = json.loads(body)["error"]
        assert (error["code"], error["field"]) == ("validation_error", "key"), (method, key, error)
    decoded = urllib.parse.unquote(key)
    lookup = json.dumps({"items": [{"contentType": "chapter", "key": decoded}]}).encode()
    status, _, body = raw(service, "POST", "/v1/cache/lookup", lookup, json_headers)
    assert status == 400 and json.loads(body)["error"]["field"] == "items[0].key", body
    assert stored(admin, user) == before


def test_no_route_redirects_on_a_trailing_slash(service, victim, admin):
    user, h, before = victim
    for method, path in [("DELETE", "/v1/cache/"), ("GET", "/healthz/"), ("POST", "/v1/features/lookup/"),
                         ("GET", "/openapi.json/")]:
        status, headers, body = raw(service, method, path, None, h)
        assert status == 404 and "location" not in headers, (method, path, status, headers)
        assert json.loads(body)["error"]["code"] == "not_found"
    assert stored(admin, user) == before


def test_feature_keys_follow_the_same_rule(service, tokens):
    h = {"Authorization": f"Bearer {tokens(service=True)}", "Content-Type": "application/json"}
    for key in ("..", ".", "%2e%2e", "a%5C.."):
        status, _, body = raw(service, "GET", f"/v1/features/{key}", None, h)
        assert status == 400 and json.loads(body)["error"]["field"] == "entityKey", (key, status, body)
    for key in ("..", "a/..", "a\n", "%2E"):
        status, _, body = raw(service, "POST", "/v1/features/lookup", json.dumps({"entityKeys": ["ok", key]}).encode(), h)
        assert status == 400 and json.loads(body)["error"]["field"] == "entityKeys[1]", (key, status, body)


def test_methods_of_a_path_are_all_allowed_and_options_lists_them(service, tokens):
    status, headers, body = raw(service, "OPTIONS", "/v1/cache/chapter/k", None, user_headers(tokens, uuid.uuid4()))
    assert status == 405 and json.loads(body)["error"]["code"] == "method_not_allowed"
    assert {m.strip() for m in headers["allow"].split(",")} == {"GET", "HEAD", "PUT", "DELETE"}


# -- item 4: input that was a 500 is a 400, and nothing is stored --------------------------

DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"content": "x", "model": "gpt\\u0000x"}', "model"),
        (b'{"content": "x", "model": "gpt\\ud800"}', None),
        (b'{"content": "x", "model": "\\udc00"}', None),
        (b'{"content": ' + DEEP + b"}", None),
        (b'{"content": {"a": ' + DEEP + b"}}", None),
        (b'{"content": "caf\xe9"}', None),
        (b'{"content": ["\xff\xfe"], "metadata": {"k": "\xc3"}}', None),
        (b'{"content": "x", "costUsd": 1e8}', "costUsd"),
        (b'{"content": "x", "costUsd": 99999999.9999999}', "costUsd"),
        (b'{"content": "x", "ttlSeconds": 1e400}', None),
    ],
)
def test_bad_body_is_400_and_stores_nothing(service, tokens, admin, body, field):
    user = uuid.uuid4()
    h = user_headers(tokens, user) | {"Content-Type": "application/json"}
    status, _, answer = raw(service, "PUT", "/v1/cache/chapter/k", body, h)
    assert status == 400, (status, answer)
    error = json.loads(answer)["error"]
    assert error["code"] == "validation_error"
    if field:
        assert error["field"] == field, error
    assert stored(admin, user) == []


def test_the_largest_cost_the_schema_allows_is_stored(http, tokens, admin):
    user = uuid.uuid4()
    res = http.put("/v1/cache/chapter/k", json={"content": 1, "costUsd": MAX_COST_USD}, headers=user_headers(tokens, user))
    assert res.status_code == 201 and res.json()["costUsd"] == MAX_COST_USD
    doc = http.get("/openapi.json").json()
    assert doc["components"]["schemas"]["PutEntry"]["properties"]["costUsd"]["maximum"] == MAX_COST_USD < 1e8


def test_a_content_type_with_a_trailing_newline_is_400_on_every_route(service, tokens, admin):
    user = uuid.uuid4()
    h = user_headers(tokens, user) | {"Content-Type": "application/json"}
    for method in ("PUT", "GET", "DELETE"):
        status, _, body = raw(service, method, "/v1/cache/chapter%0A/k", b'{"content": 1}', h)
        assert status == 400 and json.loads(body)["error"]["field"] == "contentType", (method, status, body)
    lookup = json.dumps({"items": [{"contentType": "chapter", "key": "k"}, {"contentType": "chapter\n", "key": "k"}]})
    status, _, body = raw(service, "POST", "/v1/cache/lookup", lookup.encode(), h)
    assert status == 400 and json.loads(body)["error"]["field"] == "items[1].contentType", body
    status, _, body = raw(service, "POST", "/v1/cache/lookup", b'{"items": [{"contentType": "chapter", "key": "\\ud800"}]}', h)
    assert status == 400 and json.loads(body)["error"]["code"] == "validation_error", body
    assert stored(admin, user) == []


# -- item 5: headers and media types as the contract says ------------------------------------


def test_an_empty_or_loose_x_cache_user_is_400(http, tokens):
    user = uuid.uuid4()
    as_service = {"Authorization": f"Bearer {tokens(service=True)}"}
    for named in ("", f"urn:uuid:{user}", user.hex, f"{{{user}}}"):
        for h in (as_service, user_headers(tokens, user)):
            res = http.get("/v1/cache/stats", headers=h | {"X-Cache-User": named})
            assert res.status_code == 400 and res.json()["error"]["field"] == "X-Cache-User", (named, res.text)
    assert http.get("/v1/cache/stats", headers=as_service | {"X-Cache-User": str(user)}).status_code == 200


def test_consistency_token_pattern_is_what_the_service_accepts(http, tokens):
    doc = http.get("/openapi.json").json()
    (param,) = [p for p in doc["paths"]["/v1/cache/{contentType}/{key}"]["get"]["parameters"]
                if p["name"] == "X-Consistency-Token"]
    assert param["schema"]["pattern"] == LSN_RE.pattern
    h = user_headers(tokens, uuid.uuid4())
    for token in ("0/1A2B3C8", "FFFFFFFF/0"):
        assert http.get("/v1/cache/chapter/k", headers=h | {"X-Consistency-Token": token}).status_code == 404
    for token in ("", "0/", "0/1 2", "123456789/0", "x/1", "0//1"):
        res = http.get("/v1/cache/chapter/k", headers=h | {"X-Consistency-Token": token})
        assert res.status_code == 400 and res.json()["error"]["field"] == "X-Consistency-Token", token


def test_ttl_maximum_is_the_configured_one(http, tokens, stack):
    doc = http.get("/openapi.json").json()
    ttl = doc["components"]["schemas"]["PutEntry"]["properties"]["ttlSeconds"]["anyOf"][0]
    assert ttl["maximum"] == stack.settings().max_ttl_s


def test_request_ids_are_short_plain_tokens_or_replaced(http, tokens, admin):
    user = uuid.uuid4()
    h = user_headers(tokens, user)
    fine = "req-" + "a" * 120 + ".1_2"
    assert http.get("/v1/cache/chapter/k", headers=h | {"X-Request-Id": fine}).headers["x-request-id"] == fine
    for sent in ("x" * 70_000, "a" * 129, "has space", "quote\"d", "ü"):
        res = http.put("/v1/cache/chapter/k", json={"content": 1}, headers=h | {"X-Request-Id": sent.encode()})
        assert res.status_code in (200, 201)
        rid = res.headers["x-request-id"]
        assert rid != sent and len(rid) == 32 and res.json() is not None
    logged = [r[0] for r in admin.execute(
        "SELECT details->>'requestId' FROM cache_audit_log WHERE user_id = %s", (user,))]
    assert len(logged) == 5 and all(len(r) == 32 for r in logged)
    res = http.get("/v2/none", headers={"X-Request-Id": "y" * 200})
    assert res.status_code == 404 and len(res.headers["x-request-id"]) == 32


@pytest.mark.parametrize("media_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                        "application/json; charset=latin-1", "application/jsonx", "json", ""])
def test_a_body_that_is_not_json_is_415(service, tokens, admin, media_type):
    user = uuid.uuid4()
    h = user_headers(tokens, user) | {"Content-Type": media_type}
    service_h = {"Authorization": f"Bearer {tokens(service=True)}", "Content-Type": media_type}
    for path, body, headers in [
        ("/v1/cache/chapter/k", b'{"content": 1}', h),
        ("/v1/cache/lookup", b'{"items": [{"contentType": "chapter", "key": "k"}]}', h),
        ("/v1/features/lookup", b'{"entityKeys": ["k"]}', service_h),
    ]:
        status, _, answer = raw(service, "PUT" if path.startswith("/v1/cache/chapter") else "POST", path, body, headers)
        assert status == 415 and json.loads(answer)["error"]["code"] == "unsupported_media_type", (path, status, answer)
    assert stored(admin, user) == []


@pytest.mark.parametrize("media_type", [None, "application/json", "Application/JSON; charset=UTF-8",
                                        "application/merge-patch+json", 'application/json;charset="utf-8"'])
def test_json_media_types_and_none_are_read_as_json(service, tokens, admin, media_type):
    user = uuid.uuid4()
    h = user_headers(tokens, user) | ({} if media_type is None else {"Content-Type": media_type})
    status, _, answer = raw(service, "PUT", "/v1/cache/chapter/k", b'{"content": 1}', h)
    assert status == 201, answer
    assert stored(admin, user) == [("chapter", "k")]
