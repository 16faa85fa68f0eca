"""The feature endpoints: route -> token -> validation -> reader -> JSON.

Only ``service_role`` tokens may read features, unless ``features_open_to_users`` lets user
tokens too. A request names tables (all of them by default); an unknown table is a 400
naming it, and a key that a table does not hold is ``null`` for that table.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from cachesvc.api.context import AppContext, context
from cachesvc.api.errors import ApiError, validation_error
from cachesvc.api.identity import authenticate
from cachesvc.api.wire import check_key, decode, json_response, read_body
from cachesvc.features import models, stats as feature_stats
from cachesvc.features.catalog import FeatureTable
from cachesvc.features.service import FeatureService


def _authorized(request: Request) -> AppContext:
    ctx = context(request)
    principal = authenticate(request, ctx.tokens)
    if principal.is_service:
        return ctx
    if ctx.settings.features.open_to_users and principal.role == "authenticated":
        return ctx
    raise ApiError(403, "forbidden", "features may be read with a service_role token only")


def _tables(features: FeatureService, names: list[str] | None) -> list[FeatureTable]:
    try:
        return features.catalog.resolve(names)
    except KeyError as exc:
        unknown = exc.args[0]
        raise validation_error(f"unknown feature table(s): {', '.join(unknown)}", "tables") from None


def _tables_param(request: Request) -> list[str] | None:
    """``tables=a,b`` as the OpenAPI says (form style; spaces around a name are ignored):
    absent means all, an empty name is refused."""
    raw = request.query_params.get("tables")
    if raw is None:
        return None
    names = [name.strip() for name in raw.split(",")]
    if "" in names:
        raise validation_error("tables must be comma-separated feature table names, none empty", "tables")
    return names


async def get_features(request: Request) -> Response:
    ctx = _authorized(request)
    features = ctx.features
    key = request.path_params["entityKey"]
    check_key(key, "entityKey")
    tables = _tables(features, _tables_param(request))
    (found,) = await features.lookup([key], tables)
    features.hot_keys.record([key])
    return json_response(models.FeatureVector(entity_key=key, features=found))


async def lookup(request: Request) -> Response:
    ctx = _authorized(request)
    features = ctx.features
    body = decode(await read_body(request, ctx.settings.max_body_bytes), models.FeatureLookupRequest)
    for index, key in enumerate(body.entity_keys):
        check_key(key, f"entityKeys[{index}]")
    tables = _tables(features, body.tables)
    found = await features.lookup(body.entity_keys, tables)
    features.hot_keys.record(body.entity_keys)
    results = [models.FeatureVector(entity_key=k, features=f) for k, f in zip(body.entity_keys, found)]
    return json_response(models.FeatureLookupResponse(results=results))


async def table_stats(request: Request) -> Response:
    ctx = _authorized(request)
    features = ctx.features
    return json_response(await feature_stats.collect(features.reader, features.catalog.schema))
