"""The client against a misbehaving server or proxy: whatever comes back, a call returns one finite
score per input or raises a `RewardClientError`; it never reads an unbounded answer into memory."""

from __future__ import annotations

import asyncio
import gzip
import time
import tracemalloc
import zlib
from collections.abc import Callable, Iterator

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from harness.live_server import serving
from shared import (
    AsyncRewardClient,
    RemoteReward,
    RetryPolicy,
    RewardClient,
    RewardClientError,
    RewardResponseError,
    RewardServiceUnavailable,
)

FAST_RETRY = RetryPolicy(max_attempts=3, max_total_s=10, initial_backoff_s=0.01, max_backoff_s=0.05)
MB = 1024 * 1024


def answer(scores: str, extra: str = "") -> bytes:
    """A /score answer with `scores` written as raw JSON text."""
    return f'{{"scorer": "x", "model": "m", "scores": {scores}, "truncated": 0{extra}}}'.encode()


SCORERS = {"default": "x", "scorers": [], "limits": {"max_items_per_request": 8, "max_text_chars": 100}}


def hostile_server(
    make: Callable[[Request], Response], scorers_make: Callable[[Request], Response] | None = None
) -> tuple[Starlette, list[dict]]:
    """`make` answers POST /score; `scorers_make` GET /scorers (default: a valid answer)."""
    calls: list[dict] = []

    async def score(request: Request) -> Response:
        calls.append(await request.json())
        return make(request)

    async def scorers(request: Request) -> Response:
        return scorers_make(request) if scorers_make else JSONResponse(SCORERS)

    routes = [Route("/score", score, methods=["POST"]), Route("/scorers", scorers, methods=["GET"])]
    return Starlette(routes=routes), calls


def raw(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Callable[[Request], Response]:
    return lambda _: Response(body, status_code=status, headers=headers, media_type="application/json")


def score_with(make: Callable[[Request], Response], texts: list[str], **client_options: object) -> object:
    app, _ = hostile_server(make)
    options = {"retry": FAST_RETRY, "max_items_per_request": 8, **client_options}
    with serving(app, ready_path=None) as server, RewardClient(server.url, **options) as client:  # type: ignore[arg-type]
        return client.score(texts)


@pytest.mark.parametrize(
    "scores",
    [
        "[NaN, 1.0]",
        "[Infinity, 1.0]",
        "[-Infinity, 1.0]",
        "[1e400, 1.0]",
        "[1" + "0" * 400 + ", 1.0]",
        "[true, 1.0]",
        "[false, 1.0]",
        '["2.5", 1.0]',
        "[null, 1.0]",
    ],
)
def test_a_score_that_is_not_a_finite_json_number_is_refused(scores: str) -> None:
    with pytest.raises(RewardResponseError):
        score_with(raw(answer(scores)), ["a", "b"])


def test_integer_scores_are_numbers() -> None:
    assert score_with(raw(answer("[1, -2]")), ["a", "b"]).scores == [1.0, -2.0]  # type: ignore[attr-defined]


@pytest.mark.parametrize("status", [201, 202, 204, 206, 299, 301, 302, 303, 307, 308])
def test_only_200_carries_scores(status: int) -> None:
    headers = {"Location": "http://elsewhere.invalid/score"} if 300 <= status < 400 else {}
    body = b"" if status == 204 else answer("[1.0]")
    with pytest.raises(RewardResponseError) as error:
        score_with(raw(body, status, headers), ["a"])
    assert str(status) in str(error.value)


@pytest.mark.parametrize(
    "extra",
    [
        ', "labels": [{"hate": {"logit": 1, "probability": 0.5}}]',
        ', "members": {"a": [1.0]}',
        ', "members": {"a": [1.0, 2.0], "b": [1.0]}',
        ', "truncated": 3',
    ],
    ids=["labels-short", "members-short", "one-member-short", "truncated-over-count"],
)
def test_every_list_in_an_answer_must_match_the_request(extra: str) -> None:
    body = answer("[1.0, 2.0]", extra).replace(b', "truncated": 0, "truncated": 3', b', "truncated": 3')
    with pytest.raises(RewardResponseError):
        score_with(raw(body), ["a", "b"])


def test_chunks_whose_members_differ_are_an_error_not_a_key_error() -> None:
    def make(request: Request) -> Response:
        name = "a" if calls_seen.append(1) or len(calls_seen) == 1 else "b"
        return Response(answer("[1.0]", f', "members": {{"{name}": [1.0]}}'), media_type="application/json")

    calls_seen: list[int] = []
    with pytest.raises(RewardResponseError, match="members"):
        score_with(make, ["a", "b"], max_items_per_request=1)


def test_labels_asked_for_but_missing_are_an_error() -> None:
    app, _ = hostile_server(raw(answer("[1.0]")))
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardResponseError, match="labels"):
            client.score(["a"], return_labels=True)


@pytest.mark.parametrize("limit", [0, -1])
def test_scorers_advertising_no_items_per_request_is_a_response_error(limit: int) -> None:
    body = {**SCORERS, "limits": {"max_items_per_request": limit, "max_text_chars": 10}}
    app, _ = hostile_server(raw(answer("[1.0]")), lambda _: JSONResponse(body))
    with serving(app, ready_path=None) as server, RewardClient(server.url, retry=FAST_RETRY) as client:
        with pytest.raises(RewardResponseError):
            client.score(["a"])


def test_max_items_per_request_below_one_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RewardClient("http://127.0.0.1:9", max_items_per_request=0)


def test_deeply_nested_json_is_a_response_error() -> None:
    with pytest.raises(RewardResponseError, match="nested"):
        score_with(raw(b"[" * 100_000 + b"]" * 100_000), ["a"])


def test_a_corrupt_gzip_body_is_a_response_error() -> None:
    body = gzip.compress(answer("[1.0]"))[:20] + b"\x00garbage"
    with pytest.raises(RewardResponseError):
        score_with(raw(body, headers={"Content-Encoding": "gzip"}), ["a"])


def gzip_bomb(decompressed_mb: int) -> bytes:
    """A valid gzip body of a /score answer padded with `decompressed_mb` MB of spaces."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(b'{"scorer": "x", "model": "m", "scores": [1.0')]
    block = b" " * MB
    parts += [compressor.compress(block) for _ in range(decompressed_mb)]
    parts.append(compressor.compress(b"]}") + compressor.flush())
    return b"".join(parts)


def endless(request: Request) -> Response:
    def chunks() -> Iterator[bytes]:
        yield b'{"scorer": "x", "model": "m", "scores": [1.0'
        for _ in range(300):  # 300 MB, if the client kept reading
            yield b" " * MB
        yield b"]}"

    return StreamingResponse(chunks(), media_type="application/json")


@pytest.mark.parametrize(
    "make",
    [endless, raw(gzip_bomb(200), headers={"Content-Encoding": "gzip"})],
    ids=["300MB-stream", "gzip-bomb-200MB"],
)
def test_an_oversized_answer_is_refused_without_reading_it_whole(make: Callable[[Request], Response]) -> None:
    tracemalloc.start()
    try:
        started = time.monotonic()
        with pytest.raises(RewardResponseError, match="larger than"):
            score_with(make, ["a"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The bound for one item is well under 1 MB; the client (and the test server in this process)
    # stays far below the answer's size.
    assert peak < 40 * MB
    assert time.monotonic() - started < 30


def test_a_declared_oversized_answer_is_refused_unread() -> None:
    with pytest.raises(RewardResponseError, match="larger than"):
        score_with(raw(b" " * (2 * MB) + answer("[1.0]")), ["a"])


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9", "NaN", "0x10", "soon"])
def test_a_malformed_retry_after_gets_the_default_backoff(value: str) -> None:
    states = iter([503, 503, 200])

    def make(_: Request) -> Response:
        status = next(states)
        if status == 503:
            return JSONResponse({"detail": "busy"}, status_code=503, headers={"Retry-After": value})
        return Response(answer("[1.0]"), media_type="application/json")

    policy = RetryPolicy(max_attempts=3, max_total_s=10, initial_backoff_s=0.2, max_backoff_s=0.2)
    started = time.monotonic()
    assert score_with(make, ["a"], retry=policy).scores == [1.0]  # type: ignore[attr-defined]
    # Two waits of the default backoff (0.2 s plus jitter each), not zero and not capped Retry-After.
    assert 0.35 < time.monotonic() - started < 5


def test_the_async_client_refuses_the_same_answers() -> None:
    bodies = iter([answer("[NaN]"), answer("[true]")])
    app, _ = hostile_server(lambda _: Response(next(bodies), media_type="application/json"))

    async def run(url: str) -> list[Exception]:
        errors = []
        async with AsyncRewardClient(url, retry=FAST_RETRY, max_items_per_request=8) as client:
            for _ in range(2):
                try:
                    await client.score(["a"])
                except RewardClientError as exc:
                    errors.append(exc)
        return errors

    with serving(app, ready_path=None) as server:
        errors = asyncio.run(run(server.url))
    assert [type(e) for e in errors] == [RewardResponseError, RewardResponseError]


def test_async_client_bounds_an_endless_answer() -> None:
    app, _ = hostile_server(endless)

    async def run(url: str) -> None:
        async with AsyncRewardClient(url, retry=FAST_RETRY, max_items_per_request=8) as client:
            await client.score(["a"])

    with serving(app, ready_path=None) as server, pytest.raises(RewardResponseError, match="larger than"):
        asyncio.run(run(server.url))


def test_remote_reward_inherits_the_checks() -> None:
    app, _ = hostile_server(raw(answer("[NaN]")))
    with serving(app, ready_path=None) as server:
        reward = RemoteReward(server.url, retry=FAST_RETRY)
        with pytest.raises(RewardResponseError):
            reward(prompts=["p"], completions=["c"])
        with pytest.raises(RewardResponseError):
            asyncio.run(reward.as_async()(prompts=["p"], completions=["c"]))
        reward.close()


def test_an_error_body_is_cut_not_read_whole() -> None:
    app, _ = hostile_server(raw(b'{"detail": "' + b"x" * (20 * MB) + b'"}', status=400))
    with (
        serving(app, ready_path=None) as server,
        RewardClient(server.url, retry=FAST_RETRY, max_items_per_request=8) as client,
    ):
        with pytest.raises(RewardClientError) as error:
            client.score(["a"])
    assert len(str(error.value)) < 2_000


def test_a_retryable_status_from_everywhere_still_ends_unavailable() -> None:
    with pytest.raises(RewardServiceUnavailable):
        score_with(raw(b"", 502, {"Retry-After": "nan"}), ["a"])


@pytest.mark.parametrize("encoding", ["gzip", "deflate-zlib", "deflate-raw", "identity"])
def test_compressed_answers_within_the_bound_are_read(encoding: str) -> None:
    body = answer("[1.5, -2]")
    wbits = {"gzip": 31, "deflate-zlib": 15, "deflate-raw": -15}.get(encoding)
    if wbits is not None:
        compressor = zlib.compressobj(6, zlib.DEFLATED, wbits)
        body = compressor.compress(body) + compressor.flush()
    headers = {"Content-Encoding": encoding.split("-")[0]}
    assert score_with(raw(body, headers=headers), ["a", "b"]).scores == [1.5, -2.0]  # type: ignore[attr-defined]


def test_an_encoding_the_client_did_not_ask_for_is_a_response_error() -> None:
    with pytest.raises(RewardResponseError, match="br"):
        score_with(raw(b"\x0b\x02\x80", headers={"Content-Encoding": "br"}), ["a"])
