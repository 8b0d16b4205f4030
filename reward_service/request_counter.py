"""Counts every answer of a scoring route in `reward_requests_total`, with the status actually sent.

One place for the count, outside every layer that can answer: the API-key check (401), the body
limit (413), body parsing (400) and schema validation (422) answer before a route runs, the
shared scoring path answers the rest, and the shutdown guard answers 503 for a request cut short.

The `route` label is the route's path template (`/score/{scorer}`), never the raw path, and
the `scorer` label is a configured scorer's name or "unknown", so neither grows without bound.
The scoring path names the scorer it resolved (`note_scorer_label`); a request that never got
there is labelled by the `{scorer}` in its path, else with the default scorer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reward_service.metrics import ServiceMetrics
from reward_service.scorers import ScorerRegistry

UNKNOWN_SCORER_LABEL = "unknown"
_SCORER_LABEL_KEY = "reward_scorer_label"
_CONNECTION_ANSWER_KEY = "reward_connection_answer"
# What the count says for a request whose handling ended without a response (an exception that
# escaped every handler): the server answers it with 500.
_NO_RESPONSE_STATUS = 500


def note_scorer_label(scope: Scope, label: str) -> None:
    """Record the scorer label the scoring path resolved for this request."""
    scope[_SCORER_LABEL_KEY] = label


def note_connection_answer(scope: Scope, status: int) -> None:
    """Record that the connection layer answered this request itself (a 408 for a body that stopped
    arriving, say): the app then sees a disconnect, and whatever it answers is never sent."""
    scope[_CONNECTION_ANSWER_KEY] = status


class RequestCounter:
    """ASGI middleware: after each POST to a scoring route, count its route, scorer and status."""

    def __init__(
        self,
        app: ASGIApp,
        openapi: Callable[[], dict[str, Any]],
        metrics: Callable[[], ServiceMetrics],
        registry: Callable[[], ScorerRegistry],
    ) -> None:
        self.app = app
        self._openapi = openapi
        self._templates: list[tuple[str, re.Pattern[str]]] | None = None
        self._metrics = metrics
        self._registry = registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        status = _NO_RESPONSE_STATUS

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            self._count(scope, scope.get(_CONNECTION_ANSWER_KEY, status))

    def _count(self, scope: Scope, status: int) -> None:
        matched = self._scoring_route(scope)
        if matched is None:
            return
        template, path_params = matched
        registry = self._registry()
        label = scope.get(_SCORER_LABEL_KEY)
        if label is None:
            named = path_params.get("scorer")
            label = registry.default if named is None else named
            if label not in registry.scorers:
                label = UNKNOWN_SCORER_LABEL
        self._metrics().requests.labels(template, label, str(status)).inc()

    def _scoring_route(self, scope: Scope) -> tuple[str, dict[str, str]] | None:
        # Matched here rather than read from the scope, because a 401 or 413 is answered before
        # the router has run. The templates come from the OpenAPI schema (public, and the same for
        # routes included from other routers); only POST routes score.
        if self._templates is None:
            self._templates = [
                (template, compile_path(template)[0])
                for template, operations in self._openapi().get("paths", {}).items()
                if "post" in operations
            ]
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        for template, pattern in self._templates:
            if match := pattern.match(path):
                return template, match.groupdict()
        return None
