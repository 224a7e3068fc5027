"""OpenAPI 3.1 built from the route table and the same pydantic models the handlers use."""

from __future__ import annotations

import re
from typing import Any, get_args

from pydantic import TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from cloud.api.routing import FARM_PARAM, Route
from shared.models import Id
from shared.topics import ID_RE

REF = "#/components/schemas/{model}"
_PARAM_RE = re.compile(r"\{(\w+)\}")
_NUMERIC_PARAMS = {"user_id", "notification_id", "recommendation_id"}  # bigint ids
_STATUS_TEXT = {
    200: "OK",
    201: "Created",
    204: "No content",
    400: "Malformed request",
    401: "Missing, invalid or expired bearer token",
    403: "The caller's role in this farm is too low",
    404: "Not found (also for resources of farms the caller does not belong to)",
    409: "Conflict with the current state",
    413: "Body too large",
    415: "Body is not application/json",
    422: "Validation failed; `errors` lists each failing field",
    429: "Rate limited; see Retry-After",
    503: "Database (or another dependency) unavailable; see Retry-After",
}
PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
        "error_id": {"type": "string"},
    },
}


_ID_CHECK = get_args(Id)[1].func  # Annotated[str, AfterValidator(check)]


class _Schemas(GenerateJsonSchema):
    """pydantic's generator, plus the pattern of ``shared.models.Id`` (checked by a function
    that JSON Schema cannot see) so clients and fuzzers know what an id looks like."""

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        out = super().function_after_schema(schema)
        if schema["function"].get("function") is _ID_CHECK and out.get("type") == "string":
            out = {**out, "pattern": ID_RE.pattern, "maxLength": 64}
        return out


def _path_params(route: Route) -> list[dict[str, Any]]:
    out = []
    for name in _PARAM_RE.findall(route.path):
        if name in _NUMERIC_PARAMS:
            schema: dict[str, Any] = {"type": "integer", "minimum": 1}
        else:
            schema = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"}
        out.append({"name": name, "in": "path", "required": True, "schema": schema})
    return out


# Scopes whose path id is unique only within a farm (routing.FARM_PARAM picks the farm).
FARM_SCOPED_IDS = ("room", "device", "edge")
FARM_PARAM_DOC = {
    "name": FARM_PARAM,
    "in": "query",
    "required": False,
    "schema": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"},
    "description": "the farm of the id in the path; needed only when the id is in more than one"
    " of your farms (ids are per farm), else a 409 asks for it",
}


def _query_params(route: Route, components: dict[str, Any]) -> list[dict[str, Any]]:
    if route.query is None:
        return [FARM_PARAM_DOC] if route.scope in FARM_SCOPED_IDS else []
    schema = route.query.model_json_schema(
        ref_template=REF, mode="validation", schema_generator=_Schemas
    )
    components.update(schema.pop("$defs", {}))
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k != "description"},
        }
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    if route.scope in FARM_SCOPED_IDS and FARM_PARAM not in schema.get("properties", {}):
        params.append(FARM_PARAM_DOC)
    return params


def _error_statuses(route: Route) -> list[int]:
    # Any route can meet a database that is down or a pool that is exhausted.
    statuses = set(route.errors) | {503}
    if route.scope != "public":
        statuses |= {401, 429}
    if route.scope not in ("public", "user"):
        statuses |= {403, 404}
    if route.scope in FARM_SCOPED_IDS:
        statuses |= {409}  # the id is in several of the caller's farms: say which (farm_id)
    if route.body is not None:
        statuses |= {400, 413, 415, 422}
    if route.query is not None or "{" in route.path:
        statuses |= {404} if "{" in route.path else set()
        statuses |= {400, 422} if route.query is not None else set()
    return sorted(statuses)


def build_spec(routes: list[Route], *, version: str) -> dict[str, Any]:
    inputs: list[tuple[tuple[int, str], Any, TypeAdapter[Any]]] = []
    for i, route in enumerate(routes):
        if route.body_adapter is not None:
            inputs.append(((i, "body"), "validation", route.body_adapter))
        if route.response_adapter is not None:
            inputs.append(((i, "response"), "serialization", route.response_adapter))
    refs, top = TypeAdapter.json_schemas(inputs, ref_template=REF, schema_generator=_Schemas)
    components: dict[str, Any] = dict(top.get("$defs", {}))
    components["Problem"] = PROBLEM_SCHEMA
    problem = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}

    paths: dict[str, dict[str, Any]] = {}
    for i, route in enumerate(routes):
        op: dict[str, Any] = {
            "operationId": route.handler.__name__,
            "summary": route.summary,
            "tags": [route.tag] if route.tag else [],
            "parameters": _path_params(route) + _query_params(route, components),
            "responses": {},
        }
        if route.description:
            op["description"] = route.description
        if route.scope != "public":
            op["security"] = [{"bearerAuth": []}]
            role = "any signed-in user" if route.scope == "user" else f"role ≥ {route.role}"
            op["description"] = (op.get("description", "") + f"\n\nAccess: {role}.").strip()
        if route.body_adapter is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[((i, "body"), "validation")]}},
            }
        ok: dict[str, Any] = {"description": _STATUS_TEXT.get(route.status, "OK")}
        if route.response_adapter is not None and route.status != 204:
            content = {"application/json": {"schema": refs[((i, "response"), "serialization")]}}
            if route.csv:
                content["text/csv"] = {"schema": {"type": "string"}}
            ok["content"] = content
        op["responses"][str(route.status)] = ok
        for status in _error_statuses(route):
            op["responses"][str(status)] = {"description": _STATUS_TEXT[status], "content": problem}
        paths.setdefault(route.path, {})[route.method.lower()] = op

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "smartfarm cloud API",
            "version": version,
            "description": (
                "Farms, rooms, devices, telemetry, commands, automation rules and AI "
                "recommendations. Errors are application/problem+json (RFC 9457). Lists are "
                "cursor-paginated: pass `next_cursor` back as `?cursor=`."
            ),
        },
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
