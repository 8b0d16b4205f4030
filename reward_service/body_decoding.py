"""JSON request bodies decoded with msgspec, so that parsing does not hold the event loop for seconds.

FastAPI parses a JSON body with `json.loads` and then validates the Python objects with pydantic; on
a 60 MB body that is seconds of the event loop (a thread does not help: both hold the GIL). Here a
route first checks the body's keys against its model with msgspec, which stops at the first unknown
key without reading its value (`{"texts": ["a"], "x": [0, 0, ... 30M]}` is refused at once), then
decodes it with msgspec (several times faster than `json.loads`) and hands the result to FastAPI,
whose pydantic validation runs as before. Errors keep pydantic's words: a body msgspec refuses for
any other reason (bad JSON, NaN, a wrong type) takes FastAPI's own path unchanged.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`(?: - at `\$(?P<path>[^`]*)`)?$")


def key_guard(model: type[BaseModel]) -> type[msgspec.Struct]:
    """A msgspec Struct with `model`'s keys, refusing unknown ones; values are skipped (`Raw`), except
    those of nested models that also refuse unknown keys, which are checked the same way."""
    fields: list[tuple[str, Any, Any]] = []
    for name, field in model.model_fields.items():
        nested = _forbidding_model(field.annotation)
        kind: Any = key_guard(nested) | None if nested is not None else msgspec.Raw
        fields.append((field.alias or name, kind, msgspec.UNSET))
    return msgspec.defstruct(f"{model.__name__}Keys", fields, forbid_unknown_fields=True)


def _forbidding_model(annotation: Any) -> type[BaseModel] | None:
    """The model in `annotation` (`Model` or `Model | None`) if it refuses unknown keys."""
    candidates = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    others = [c for c in candidates if c is not type(None) and c not in models]
    if len(models) == 1 and not others and models[0].model_config.get("extra") == "forbid":
        return models[0]
    return None


def _is_json(request: Request) -> bool:
    # As FastAPI decides whether to parse a body as JSON: no content type, or application/(*+)json.
    content_type = request.headers.get("content-type")
    if not content_type:
        return True
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


async def decode_body(request: Request, guard: type[msgspec.Struct]) -> None:
    """Check the body's keys (an unknown one is pydantic's 422 `extra_forbidden`, naming it) and
    decode it for FastAPI; a body msgspec cannot take is left for FastAPI to parse and word."""
    try:
        body = await request.body()
    except ClientDisconnect:
        # As FastAPI answers a body it could not read (the connection layer has already sent the
        # client its 408, or the client is gone): a 400, never a traceback.
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None
    if not body or not _is_json(request):
        return
    try:
        msgspec.json.decode(body, type=guard)
    except msgspec.ValidationError as exc:
        match = _UNKNOWN_FIELD.match(str(exc))
        if match is None:
            return  # a wrong type: pydantic names it in its own words
        path = [part for part in (match["path"] or "").split(".") if part]
        loc = ("body", *path, match["name"])
        raise RequestValidationError(
            [{"type": "extra_forbidden", "loc": loc, "msg": "Extra inputs are not permitted", "input": None}]
        ) from None
    except msgspec.DecodeError:
        return
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:  # e.g. an integer beyond 64 bits, which json.loads takes
        return
    # Starlette's Request.json() caches its result here; FastAPI's body parsing reads it.
    request._json = decoded  # noqa: SLF001


class DecodedBodyRoute(APIRoute):
    """An APIRoute whose JSON body (the endpoint's pydantic-model `body` parameter) is decoded by
    `decode_body` before FastAPI validates it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        model = typing.get_type_hints(self.endpoint).get("body")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler
        guard = key_guard(model)

        async def handle(request: Request) -> Response:
            await decode_body(request, guard)
            return await handler(request)

        return handle
