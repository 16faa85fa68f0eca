"""The in-process cache of feature rows (cachesvc.features.l1), on the real stack.

What it promises: a replaced table (``features load``'s swap, a peer's TRUNCATE) is seen by
the first lookup after it; a row changed in place is seen once ``CACHESVC_FEATURES_L1_MAX_AGE_MS``
has passed, and may be served from memory until then; answers are the database's, key by key
and table by table, for any mix of cached and uncached keys; memory holds at most
``CACHESVC_FEATURES_L1_MAX_MB``; and a cached row is no way around the token check.
"""

from __future__ import annotations

import json
import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from cachesvc.features.l1 import ENTRY_BYTES
from tests.harness import create_table, drop_tables, http_client, maintainer, metric, service_headers
from tests.test_features_load import cli, write_generation

GEN, OTHER, NAMES = "fl_generations", "fl_steady", "fl_names"
KEYS = 2000  # as write_generation writes
HITS, MISSES, REPLACED, ROWS, BYTES = ("cachesvc_feature_l1_hits_total", "cachesvc_feature_l1_misses_total",
                                       "cachesvc_feature_l1_replaced_total", "cachesvc_feature_l1_rows",
                                       "cachesvc_feature_l1_bytes")
SMALL_MB = 0.015  # room for about 50 of this module's rows (a short JSON each, and ENTRY_BYTES)


@pytest.fixture(scope="module")
def tables(stack):
    with maintainer(stack) as conn:
        create_table(conn, GEN, "id integer PRIMARY KEY, v integer NOT NULL, note text",
                     ((k, 1, f"generation 1, row {k}") for k in range(1, KEYS + 1)))
        create_table(conn, OTHER, "id integer PRIMARY KEY, w integer", ((k, k) for k in range(1, KEYS + 1)))
        create_table(conn, NAMES, "name text PRIMARY KEY, n integer", ((str(k), k) for k in range(0, KEYS, 3)))
    yield f"{GEN},{OTHER},{NAMES}"
    with maintainer(stack) as conn:
        drop_tables(conn, GEN, OTHER, NAMES)


def values(http: httpx2.Client, keys: list[int], table: str = GEN, column: str = "v") -> list:
    res = http.post("/v1/features/lookup", json={"entityKeys": [str(k) for k in keys], "tables": [table]})
    assert res.status_code == 200, res.text
    return [(r["features"][table] or {}).get(column) for r in res.json()["results"]]


def test_a_replaced_table_is_seen_at_once_a_row_changed_in_place_within_the_bound(stack, tokens, tables, start_service, tmp_path):
    # a bound far longer than the test: whatever is seen new is seen because of a replacement
    live = start_service(features_tables=tables, features_l1_max_age_ms="600000")
    keys = list(range(1, 51))
    with http_client(live, headers=service_headers(tokens)) as http:
        assert values(http, keys) == [1] * 50
        assert metric(live, MISSES) == 50 and metric(live, HITS) == 0
        with maintainer(stack) as conn:
            conn.execute(f"UPDATE features.{GEN} SET v = 99 WHERE id = 1")
        assert values(http, keys) == [1] * 50  # from memory: the row changed in place, within the bound
        assert metric(live, HITS) == 50 and metric(live, MISSES) == 50
        assert values(http, [1, 2], OTHER, "w") == [1, 2]  # another table: its own rows

        # features load swaps a new table in: the very next lookup reads it
        result = cli(stack, "features", "load", GEN, str(write_generation(tmp_path / "g2.csv", 2)))
        assert result.returncode == 0, result.stderr
        assert values(http, keys) == [2] * 50
        assert metric(live, REPLACED) == 50
        assert values(http, [1, 2], OTHER, "w") == [1, 2] and metric(live, HITS) == 52  # still current

        # a peer empties and refills the table in place (TRUNCATE gives it a new file node)
        with maintainer(stack) as conn:
            conn.execute(f"TRUNCATE features.{GEN}")
            conn.execute(f"INSERT INTO features.{GEN} SELECT k, 3, 'three' FROM generate_series(1, 40) AS k")
        assert values(http, keys) == [3] * 40 + [None] * 10  # the ten keys no longer there are misses
        assert metric(live, REPLACED) == 100

        # cached or not, who may read features is decided by the token first
        user = http.post("/v1/features/lookup", json={"entityKeys": ["1"]},
                         headers={"authorization": f"Bearer {tokens('00000000-0000-4000-8000-000000000001')}"})
        assert user.status_code == 403, user.text
        expired = http.get("/v1/features/1", headers={"authorization": f"Bearer {tokens(service=True, ttl_seconds=-60)}"})
        assert expired.status_code == 401, expired.text
        forged = http.get("/v1/features/1", headers={"authorization": "Bearer " + tokens(service=True)[:-4] + "AAAA"})
        assert forged.status_code == 401, forged.text


def test_a_row_changed_in_place_is_seen_once_the_bound_has_passed(stack, tokens, tables, start_service):
    live = start_service(features_tables=tables, features_l1_max_age_ms="300")
    with http_client(live, headers=service_headers(tokens)) as http:
        assert values(http, [7], OTHER, "w") == [7]
        with maintainer(stack) as conn:
            conn.execute(f"UPDATE features.{OTHER} SET w = -7 WHERE id = 7")
        time.sleep(0.35)  # every lookup that starts now is past the bound of the cached row
        assert values(http, [7], OTHER, "w") == [-7]
        with maintainer(stack) as conn:
            conn.execute(f"UPDATE features.{OTHER} SET w = 7 WHERE id = 7")


@pytest.mark.parametrize("lanes", ["2", "0"])
def test_answers_are_the_databases_for_any_mix_of_cached_and_new_keys(stack, tokens, tables, start_service, lanes):
    """Random lookups (table sets in any order, duplicate keys, misses, keys no table can hold),
    sent eight at a time (so that lookups share batches, with lanes) to a service with the
    cache and to one without: every answer equal. A small cache (about 50 rows) makes most lookups
    a mix of rows kept and rows read, and rows pushed out by other lookups meanwhile."""
    cached = start_service(log=f"l1-{lanes}.log", features_tables=tables, features_l1_max_age_ms="600000",
                           features_l1_max_mb=str(SMALL_MB), features_read_lanes=lanes)
    plain = start_service(log=f"plain-{lanes}.log", features_tables=tables, features_read_lanes=lanes)
    rng = random.Random(int(lanes) + 11)
    sets = [None, [GEN], [OTHER, GEN], [NAMES, OTHER], [GEN, NAMES, OTHER], [NAMES]]
    bodies = []
    for _ in range(240):
        keys = [str(rng.choice([rng.randint(1, 60), rng.randint(1, 60), rng.randint(KEYS, KEYS + 5)]))
                for _ in range(rng.randint(1, 8))]
        keys += rng.sample(["007", "abc", "-0", "0", keys[0]], rng.randint(0, 2))
        bodies.append({"entityKeys": keys} | ({"tables": tabs} if (tabs := rng.choice(sets)) else {}))
    headers = service_headers(tokens)

    def answers(service) -> list:
        with http_client(service, headers=headers) as http, ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda body: http.post("/v1/features/lookup", json=body), bodies))

    for one, other, body in zip(answers(cached), answers(plain), bodies):
        assert one.status_code == other.status_code == 200, (one.text, other.text)
        assert one.json() == other.json(), json.dumps(body)
    assert metric(cached, HITS) > 100 and metric(cached, MISSES) > 100  # both ways were taken
    assert 0 < metric(cached, BYTES) <= SMALL_MB * 2**20 and 20 < metric(cached, ROWS) <= SMALL_MB * 2**20 / ENTRY_BYTES
    if lanes != "0":
        assert metric(cached, "cachesvc_feature_lookups_coalesced_total") > 0  # batches were shared
