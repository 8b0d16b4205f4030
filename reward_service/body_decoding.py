"""JSON request bodies decoded with msgspec and validated off the event loop, so that parsing never
holds the loop for long.

FastAPI parses a JSON body with `json.loads` and then validates the Python objects with pydantic, both
on the event loop: on a 60 MB body that is seconds. Here a route's body is decoded by a msgspec Struct
built from its model (`key_guard`): it refuses an unknown key at once, without reading its value
(`{"texts": ["a"], "x": [0, 0, ... 30M]}`), and types the text fields (`str`, lists of `str`), so that
a wrong type inside a huge list stops at the first wrong item (`{"texts": [0, 0, ... 30M]}`) instead
of after decoding the rest. The other values are kept raw and decoded one by one. pydantic then
validates the result as FastAPI would (python mode, the same errors), and FastAPI receives the model
instance, which it does not validate again.

Neither msgspec nor pydantic releases the GIL, but a thread gives it back to the loop between their
calls: a body over `OFF_LOOP_BYTES` is decoded and validated in a worker thread, so the loop waits at
most one such call (a few tens of milliseconds for the largest body), not the sum of them. Smaller
bodies are decoded on the loop, where a thread's hand-off would cost more than the work.

Errors keep pydantic's words. A small body that msgspec refuses for any other reason (bad JSON, NaN,
an integer beyond 64 bits, a lone surrogate, a wrong type) takes FastAPI's own path unchanged; a large
one with a wrong type is refused with msgspec's account of where and what (`loc`, `msg`, `type`).
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import anyio
import msgspec
import pydantic
from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

# Bodies larger than this are decoded and validated in a worker thread; a wrong type in one is refused
# from msgspec's account, without decoding the rest.
OFF_LOOP_BYTES = 256 * 1024

_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `(?P<name>[^`]*)`(?: - at `\$(?P<path>[^`]*)`)?$")
_WRONG_TYPE = re.compile(
    r"(?P<what>Expected `(?P<expected>[^`]*)`, got `[^`]*`)(?: - at `\$(?P<path>[^`]*)`)?$"
)
_PATH_PART = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
# pydantic's words for msgspec's expected types where one maps to one.
_PYDANTIC_TYPE_ERRORS = {
    "str": ("string_type", "Input should be a valid string"),
    "array": ("list_type", "Input should be a valid list"),
}


class _Undecodable(Exception):
    """msgspec cannot take this body as it is; FastAPI's own parsing and pydantic word the error."""


def key_guard(model: type[BaseModel]) -> type[msgspec.Struct]:
    """A msgspec Struct with `model`'s keys, refusing unknown ones. Text fields are typed (a superset of
    what pydantic accepts, so that nothing valid is refused); other values are kept raw (`Raw`),
    except those of nested models that also refuse unknown keys, which are checked the same way."""
    fields: list[tuple[str, Any, Any]] = []
    for name, field in model.model_fields.items():
        nested = _forbidding_model(field.annotation)
        kind: Any = key_guard(nested) | None if nested is not None else _text_type(field.annotation)
        fields.append((field.alias or name, kind, msgspec.UNSET))
    return msgspec.defstruct(f"{model.__name__}Keys", fields, forbid_unknown_fields=True)


def _union_members(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _text_type(annotation: Any) -> Any:
    """The msgspec type for a field made of strings: `str`, `list[str]`, `list[list[str]]`, unions of
    them and None (lists merged into one list type, as msgspec takes one array type per union). Any
    other field is `Raw`."""
    members = _union_members(annotation)
    scalars: list[Any] = []
    items: list[Any] = []
    for member in members:
        if member is str or member is type(None):
            scalars.append(member)
        elif typing.get_origin(member) is list and len(typing.get_args(member)) == 1:
            item = _text_type(typing.get_args(member)[0])
            if item is msgspec.Raw:
                return msgspec.Raw
            items.append(item)
        else:
            return msgspec.Raw
    if items:
        scalars.append(list[typing.Union[tuple(items)]] if len(items) > 1 else list[items[0]])  # noqa: UP007
    return typing.Union[tuple(scalars)] if len(scalars) > 1 else scalars[0]  # noqa: UP007


def _forbidding_model(annotation: Any) -> type[BaseModel] | None:
    """The model in `annotation` (`Model` or `Model | None`) if it refuses unknown keys."""
    candidates = _union_members(annotation)
    models = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
    others = [c for c in candidates if c is not type(None) and c not in models]
    if len(models) == 1 and not others and models[0].model_config.get("extra") == "forbid":
        return models[0]
    return None


def _content_type_is_json(request: Request) -> bool | None:
    """As FastAPI decides whether to parse a body as JSON: application/(*+)json. None: no content
    type (FastAPI then does not parse the body)."""
    content_type = request.headers.get("content-type")
    if not content_type:
        return None
    main = content_type.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


def _loc(path: str | None) -> tuple[str | int, ...]:
    """`.texts[3]` -> ("texts", 3)."""
    return tuple(name if name else int(index) for name, index in _PATH_PART.findall(path or ""))


def _decode(body: bytes, guard: type[msgspec.Struct]) -> dict[str, Any]:
    """The body as `json.loads` would give it, checked by `guard`; raises RequestValidationError for an
    unknown key (and a wrong type in a large body), `_Undecodable` for what msgspec cannot take."""
    try:
        keys = msgspec.json.decode(body, type=guard)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if match := _UNKNOWN_FIELD.match(message):
            loc = ("body", *_loc(match["path"]), match["name"])
            raise RequestValidationError(
                [
                    {
                        "type": "extra_forbidden",
                        "loc": loc,
                        "msg": "Extra inputs are not permitted",
                        "input": None,
                    }
                ]
            ) from None
        match = _WRONG_TYPE.match(message)
        if match is None or len(body) <= OFF_LOOP_BYTES:
            raise _Undecodable from None  # pydantic names it in its own words
        kind, words = _PYDANTIC_TYPE_ERRORS.get(match["expected"], ("type_error", match["what"]))
        loc = ("body", *_loc(match["path"]))
        raise RequestValidationError([{"type": kind, "loc": loc, "msg": words, "input": None}]) from None
    except (msgspec.DecodeError, RecursionError):
        # RecursionError: a value nested deeper than msgspec follows (about 1,000 levels), which
        # `json.loads` refuses too (FastAPI's 400).
        raise _Undecodable from None
    return _builtins(keys)


def _builtins(keys: msgspec.Struct) -> dict[str, Any]:
    decoded: dict[str, Any] = {}
    for name in keys.__struct_fields__:
        value = getattr(keys, name)
        if value is msgspec.UNSET:
            continue
        if isinstance(value, msgspec.Raw):
            try:
                value = msgspec.json.decode(value)
            except (msgspec.DecodeError, RecursionError):  # e.g. an integer beyond 64 bits
                raise _Undecodable from None
        elif isinstance(value, msgspec.Struct):
            value = _builtins(value)
        decoded[name] = value  # the guard's field names are the model's aliases
    return decoded


def _decode_and_validate(
    body: bytes, guard: type[msgspec.Struct], model: type[BaseModel] | None
) -> dict[str, Any] | BaseModel:
    decoded = _decode(body, guard)
    if model is None:
        return decoded
    try:
        return model.model_validate(decoded)
    except pydantic.ValidationError as exc:
        # As FastAPI words a body's errors: located under "body".
        errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)]
        raise RequestValidationError(errors) from None


async def read_body(request: Request) -> bytes | bytearray:
    """The request's body, read without one long copy on the event loop.

    Starlette's `Request.body()` keeps the chunks and joins them at the end: one copy of the whole
    body while the loop waits (about 30 ms for 60 MB on the 2-core sandbox, longer when the cores
    are busy). Appending each chunk to one bytearray spreads that copy over the chunks as they
    arrive (under 0.3 ms each). The result is cached where Starlette keeps it, so that FastAPI's
    own parsing reads it too; msgspec, `json.loads` and pydantic take a bytearray as they take bytes.
    """
    if not hasattr(request, "_body"):
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
        request._body = body  # noqa: SLF001 - Starlette's cache of the body
    return request._body  # noqa: SLF001


async def decode_body(
    request: Request, guard: type[msgspec.Struct], model: type[BaseModel] | None = None
) -> None:
    """Check the body's keys (an unknown one is pydantic's 422 `extra_forbidden`, naming it) and
    decode it for FastAPI (validated as `model`, when given); a body msgspec cannot take is left for
    FastAPI to parse and word."""
    try:
        body = await read_body(request)
    except ClientDisconnect:
        # As FastAPI answers a body it could not read (the connection layer has already sent the
        # client its 408, or the client is gone): a 400, never a traceback.
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from None
    is_json = _content_type_is_json(request)
    if not body or is_json is False:
        return
    # Without a content type FastAPI does not parse the body: only its keys are checked here.
    validate_as = model if is_json else None
    try:
        if len(body) > OFF_LOOP_BYTES:
            decoded = await anyio.to_thread.run_sync(_decode_and_validate, body, guard, validate_as)
        else:
            decoded = _decode_and_validate(body, guard, validate_as)
    except _Undecodable:
        return
    # Starlette's Request.json() caches its result here; FastAPI's body parsing reads it, and takes
    # a model instance as it is.
    request._json = decoded  # noqa: SLF001


# Called with the request once its headers are in, before its body is read: raises to refuse it,
# else returns a context held while the body is read and decoded.
BeforeReading = Callable[[Request], AbstractContextManager[None]]
Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])
_BEFORE_READING = "before_reading_body"


def before_reading_body(check: BeforeReading) -> Callable[[Endpoint], Endpoint]:
    """Mark an endpoint whose requests `check` admits or refuses from their headers alone (apply it
    below the router's decorator, which builds the route)."""

    def mark(endpoint: Endpoint) -> Endpoint:
        setattr(endpoint, _BEFORE_READING, check)
        return endpoint

    return mark


class DecodedBodyRoute(APIRoute):
    """An APIRoute whose JSON body (the endpoint's pydantic-model `body` parameter) is decoded and
    validated by `decode_body` before FastAPI sees it, after the endpoint's `before_reading_body`
    check, if it has one."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        model = typing.get_type_hints(self.endpoint).get("body")
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return handler
        guard = key_guard(model)
        check: BeforeReading = getattr(self.endpoint, _BEFORE_READING, lambda _: nullcontext())

        async def handle(request: Request) -> Response:
            with check(request):
                await decode_body(request, guard, model)
            return await handler(request)

        return handle
