"""A local stand-in for Bedrock's Converse endpoint, so tests run the real boto3 path (signing, retries,
parsing) without AWS: `POST /model/{modelId}/converse`, errors as status + `x-amzn-ErrorType` header +
`{"message": ...}` body, as bedrock-runtime answers them.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from harness.live_server import LiveServer, serving


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


def converse_reply(content: list[dict[str, Any]], stop_reason: str) -> Reply:
    return Reply(
        body={
            "output": {"message": {"role": "assistant", "content": content}},
            "stopReason": stop_reason,
            "usage": {"inputTokens": 40, "outputTokens": 12, "totalTokens": 52},
            "metrics": {"latencyMs": 10},
        }
    )


def tool_reply(score: object, name: str = "record_score") -> Reply:
    return converse_reply(
        [{"toolUse": {"toolUseId": "tooluse_1", "name": name, "input": {"score": score}}}], "tool_use"
    )


def text_reply(text: str, stop_reason: str = "end_turn") -> Reply:
    return converse_reply([{"text": text}], stop_reason)


def error_reply(status: int, error_type: str, message: str) -> Reply:
    return Reply(status=status, body={"message": message}, headers={"x-amzn-ErrorType": error_type})


# The reference article's checks: "I like you." -> +5, "You are terrible and i hate you." -> -4.
HOSTILE_WORDS = ("hate", "terrible", "stupid", "worthless")


def article_judge(text: str, request: dict[str, Any]) -> Reply:
    """Answers like the article's judge: -4 for hostile text, +5 otherwise, in the form requested."""
    score = -4 if any(word in text.lower() for word in HOSTILE_WORDS) else 5
    if "toolConfig" in request:
        return tool_reply(score)
    return text_reply(f"{score:+d}")


Handler = Callable[[str, dict[str, Any]], Reply]


def fail_first(times: int, failure: Reply, then: Handler = article_judge) -> Handler:
    """Answers `failure` to the first `times` calls for each text, then hands over to `then`."""
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def handler(text: str, request: dict[str, Any]) -> Reply:
        with lock:
            seen[text] += 1
            failing = seen[text] <= times
        return failure if failing else then(text, request)

    return handler


@dataclass
class Call:
    model_id: str
    text: str
    request: dict[str, Any]
    authorization: str


class FakeBedrock:
    """The fake's behaviour (`handler`, `latency_s`, `delays`: extra seconds for the texts named) can be
    changed between tests; `calls` records them."""

    def __init__(self) -> None:
        self.url = ""
        self.handler: Handler = article_judge
        self.latency_s = 0.0
        self.delays: dict[str, float] = {}
        self.calls: list[Call] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.app = Starlette(
            routes=[Route("/model/{model_id:path}/converse", self._converse, methods=["POST"])]
        )

    def reset(self) -> None:
        self.handler = article_judge
        self.latency_s = 0.0
        self.delays = {}
        self.calls = []
        self.in_flight = self.peak_in_flight = 0

    def calls_for(self, text: str) -> int:
        return sum(1 for call in self.calls if call.text == text)

    async def _converse(self, request: Request) -> Response:
        body = await request.json()
        text = "".join(block.get("text", "") for block in body["messages"][-1]["content"])
        self.calls.append(
            Call(request.path_params["model_id"], text, body, request.headers.get("authorization", ""))
        )
        # All handlers run on the server's one event loop, so these counters need no lock.
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s + self.delays.get(text, 0.0))
            reply = self.handler(text, body)
        finally:
            self.in_flight -= 1
        if isinstance(reply.body, dict):
            return JSONResponse(reply.body, status_code=reply.status, headers=reply.headers)
        body = reply.body if isinstance(reply.body, bytes) else str(reply.body)
        return Response(body, status_code=reply.status, headers=reply.headers)


@contextmanager
def running_fake_bedrock() -> Iterator[tuple[FakeBedrock, LiveServer]]:
    fake = FakeBedrock()
    with serving(fake.app, ready_path=None) as server:
        fake.url = server.url
        yield fake, server
