"""The cloud and the edge answer one problem+json format (``shared.problems``): the same error
gives the same document from either side's middleware. Mocked requests, no sockets."""
from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from pydantic import BaseModel, ValidationError

from cloud import appkeys
from cloud import errors as cloud_errors
from cloud import middleware as cloud_middleware
from edge import automation
from edge.api import problems as edge_problems

Raise = Callable[[], None]
PATH = "/api/rooms/room-a"


class Body(BaseModel):
    name: str
    limit: int


def _bad_field() -> ValidationError:
    try:
        Body.model_validate({"name": "ok", "limit": "many"})
    except ValidationError as exc:
        return exc
    raise AssertionError("the body validated")


class _Counter:
    def __init__(self) -> None:
        self.count = 0

    def inc(self) -> None:
        self.count += 1


class _Metrics:
    def __init__(self) -> None:
        self.errors = _Counter()


async def _answer(
    middleware: Callable[[web.Request, Any], Awaitable[web.StreamResponse]], fail: Raise
) -> tuple[web.Response, dict[str, Any]]:
    app = web.Application()
    app[appkeys.METRICS] = _Metrics()  # type: ignore[assignment]  # the cloud counts its 500s
    request = make_mocked_request("POST", PATH, app=app)

    async def handler(request: web.Request) -> web.StreamResponse:
        fail()
        raise AssertionError("the handler did not fail")

    response = await middleware(request, handler)
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert response.content_type == "application/problem+json"
    return response, json.loads(response.body)


def _raise(exc: BaseException) -> Raise:
    def fail() -> None:
        raise exc

    return fail


def _raise_validation(cls: type[Any], **where: str) -> Raise:
    return _raise(cls.from_pydantic(_bad_field(), **where))


def _raise_pydantic() -> None:
    Body.model_validate({"name": "ok", "limit": "many"})


# (case, the cloud's way to fail, the edge's way to fail): the same error, each side's classes.
CASES = [
    (
        "422 bad field",
        _raise_validation(cloud_errors.ValidationFailed, prefix="body"),
        _raise_validation(edge_problems.ValidationFailed, where="body"),
    ),
    (
        "422 bad field (the edge's pydantic error reaching its middleware)",
        _raise_validation(cloud_errors.ValidationFailed, prefix="body"),
        _raise_pydantic,
    ),
    (
        "404 raised",
        _raise(cloud_errors.NotFound("no room room-a")),
        _raise(automation.NotFound("no room room-a")),
    ),
    ("404 unrouted", _raise(web.HTTPNotFound()), _raise(web.HTTPNotFound())),
    (
        "405",
        _raise(web.HTTPMethodNotAllowed("POST", ["GET", "HEAD"])),
        _raise(web.HTTPMethodNotAllowed("POST", ["GET", "HEAD"])),
    ),
    (
        "403",
        _raise(cloud_errors.Forbidden("not yours")),
        _raise(edge_problems.Forbidden("not yours")),
    ),
    ("500", _raise(RuntimeError("bug")), _raise(RuntimeError("bug"))),
]


def _shape(value: Any) -> Any:
    """Member names and JSON types, not values."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


@pytest.mark.parametrize(("cloud_fail", "edge_fail"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
async def test_cloud_and_edge_answer_the_same_problem_document(
    cloud_fail: Raise, edge_fail: Raise
) -> None:
    cloud_resp, cloud_doc = await _answer(cloud_middleware.problem_middleware, cloud_fail)
    edge_resp, edge_doc = await _answer(edge_problems.problem_middleware, edge_fail)

    assert cloud_resp.status == edge_resp.status == cloud_doc["status"] == edge_doc["status"]
    assert list(cloud_doc) == list(edge_doc)  # the same members, in the same order
    assert _shape(cloud_doc) == _shape(edge_doc)
    assert list(cloud_doc)[:5] == ["type", "title", "status", "detail", "instance"]
    for key in ("type", "title", "instance"):
        assert cloud_doc[key] == edge_doc[key], key
    assert cloud_doc["instance"] == PATH
    assert cloud_resp.headers.get("Allow") == edge_resp.headers.get("Allow")
    if "errors" in cloud_doc:
        # The cloud names fields under where they came from ("body.limit"), the edge bare.
        assert cloud_doc["errors"] == [
            {**err, "field": f"body.{err['field']}"} for err in edge_doc["errors"]
        ]
        assert cloud_doc["errors"][0]["field"] == "body.limit"
    elif cloud_doc["status"] == 500:
        assert cloud_doc["error_id"] != edge_doc["error_id"]
        assert "bug" not in cloud_doc["detail"] + edge_doc["detail"]
    else:
        assert cloud_doc["detail"] == edge_doc["detail"]
