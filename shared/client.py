"""HTTP clients for the reward service: `RewardClient` (sync) and `AsyncRewardClient` (asyncio).

Both spread requests over one or more base URLs, skip a server that failed (longer each time it fails
again, longest for one that hung), retry connection errors, timeouts and 408/429/502/503/504 with
backoff (honouring `Retry-After`, capped) until the call's deadline, split large lists into chunks the
server accepts, and raise a subclass of `RewardClientError` (see `shared.errors`) when they give up.
Each attempt tells the server how long it will wait (`X-Reward-Timeout-Ms`), so the server answers
504 before the client stops listening. They never return partial or made-up scores: a call returns
one score per input or raises.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
from pydantic import ValidationError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    stop_before_delay,
    wait_exponential_jitter,
)

from shared.errors import (
    RewardRequestError,
    RewardResponseError,
    RewardScoringError,
    RewardServiceUnavailable,
)
from shared.schemas import ScoreOn, ScoreRequest, ScoreResponse, ScorersResponse, TruncationSide

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
# How long the client will wait for this attempt; the service answers 504 before it passes.
TIMEOUT_HEADER = "X-Reward-Timeout-Ms"
ModelT = TypeVar("ModelT", ScoreResponse, ScorersResponse)


class _RetryableFailure(Exception):
    """One attempt failed in a way another attempt (maybe on another server) could fix."""

    def __init__(self, url: str, reason: str, retry_after: float | None = None) -> None:
        self.url = url
        self.reason = reason
        self.retry_after = retry_after
        super().__init__(f"{url}: {reason}")


@dataclass
class RetryPolicy:
    """How long and how often to retry before giving up.

    `max_total_s` is the deadline of one call (of each chunk of it): no attempt and no wait goes past
    it. A server that refused a connection is skipped for `down_cooldown_s`, one that timed out (it
    accepts connections but does not answer) for `timeout_cooldown_s`; each doubles while the server
    keeps failing, up to `max_down_s`, and resets when it answers.
    """

    max_attempts: int = 8
    max_total_s: float = 120.0
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 10.0
    down_cooldown_s: float = 5.0
    timeout_cooldown_s: float = 30.0
    max_down_s: float = 300.0
    max_retry_after_s: float = 30.0

    def tenacity_kwargs(self) -> dict[str, Any]:
        backoff = wait_exponential_jitter(
            multiplier=self.initial_backoff_s, max=self.max_backoff_s, jitter=self.initial_backoff_s
        )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, _RetryableFailure) and exc.retry_after is not None:
                # The server knows best when it will have room, but a proxy's `Retry-After: 3600`
                # must not stall training for an hour.
                return min(exc.retry_after, self.max_retry_after_s)
            return backoff(state)

        return {
            "retry": retry_if_exception_type(_RetryableFailure),
            # stop_before_delay: no wait that would end past the deadline.
            "stop": stop_after_attempt(self.max_attempts) | stop_before_delay(self.max_total_s),
            "wait": wait,
            "reraise": False,
        }


@dataclass
class _ServerPool:
    """Round-robin over base URLs, skipping for a while (longer each time) the ones that just failed."""

    urls: list[str]
    max_down_s: float
    _down_until: dict[str, float] = field(default_factory=dict)
    _failures: dict[str, int] = field(default_factory=dict)
    _cycle: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self._cycle = itertools.cycle(self.urls)

    def next_url(self) -> str:
        now = time.monotonic()
        for _ in range(len(self.urls)):
            url = next(self._cycle)
            if self._down_until.get(url, 0.0) <= now:
                return url
        # Every server failed recently: try the one whose cool-down ends first.
        return min(self.urls, key=lambda u: self._down_until.get(u, 0.0))

    def mark_down(self, url: str, cooldown_s: float) -> None:
        failures = self._failures[url] = self._failures.get(url, 0) + 1
        skip_s = min(self.max_down_s, cooldown_s * 2 ** (failures - 1))
        self._down_until[url] = time.monotonic() + skip_s

    def mark_up(self, url: str) -> None:
        self._down_until.pop(url, None)
        self._failures.pop(url, None)


def parse_base_urls(base_urls: str | Sequence[str]) -> list[str]:
    """Accept one URL, a comma-separated list, or a sequence of URLs."""
    raw = base_urls.split(",") if isinstance(base_urls, str) else list(base_urls)
    urls = [u.strip().rstrip("/") for u in raw if u and u.strip()]
    if not urls:
        raise ValueError("at least one reward service URL is required")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward service URL must start with http:// or https://: {url!r}")
    return urls


def _retry_after_seconds(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds: a number, or an HTTP date."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _detail(response: httpx.Response) -> object:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return body.get("detail", body) if isinstance(body, dict) else body


def _check(response: httpx.Response, url: str) -> Any:
    """Return the JSON body of a 2xx answer, or raise the matching client error."""
    status = response.status_code
    if status in RETRYABLE_STATUSES:
        raise _RetryableFailure(url, f"HTTP {status}: {_detail(response)}", _retry_after_seconds(response))
    if status == 424 or status >= 500:
        raise RewardScoringError(status, _detail(response), url)
    if response.is_error:
        raise RewardRequestError(status, _detail(response), url)
    try:
        return response.json()
    except ValueError:
        raise RewardResponseError(f"HTTP {status} body is not JSON: {response.text[:200]!r}", url) from None


def _validated(model: type[ModelT], body: Any, url: str) -> ModelT:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise RewardResponseError(f"not a {model.__name__}: {exc}", url) from None


def _score_path(scorer: str | None) -> str:
    return "/score" if scorer is None else f"/score/{scorer}"


def _chunk_payloads(request: ScoreRequest, chunk_size: int) -> list[dict[str, Any]]:
    """Split a request into bodies of at most `chunk_size` items, in order."""
    base = request.model_dump(exclude_none=True, exclude={"texts", "queries", "responses"})
    n = len(request.inputs())
    payloads = []
    for start in range(0, n, chunk_size):
        part = slice(start, start + chunk_size)
        if request.texts is not None:
            payloads.append({**base, "texts": request.texts[part]})
        else:
            assert request.queries is not None and request.responses is not None
            payloads.append({**base, "queries": request.queries[part], "responses": request.responses[part]})
    return payloads


def _merge(parts: list[ScoreResponse]) -> ScoreResponse:
    first = parts[0]
    if len(parts) == 1:
        return first
    labels = None
    if all(p.labels is not None for p in parts):
        labels = [item for p in parts for item in p.labels or []]
    members = None
    if all(p.members is not None for p in parts):
        members = {name: [s for p in parts for s in (p.members or {})[name]] for name in first.members or {}}
    return ScoreResponse(
        scorer=first.scorer,
        model=first.model,
        scores=[s for p in parts for s in p.scores],
        truncated=sum(p.truncated for p in parts),
        labels=labels,
        members=members,
    )


def _build_request(
    texts: Sequence[str] | None,
    queries: Sequence[str] | None,
    responses: Sequence[str] | None,
    score_on: ScoreOn,
    return_labels: bool,
    truncation_side: TruncationSide | None,
) -> ScoreRequest:
    return ScoreRequest(
        texts=list(texts) if texts is not None else None,
        queries=list(queries) if queries is not None else None,
        responses=list(responses) if responses is not None else None,
        score_on=score_on,
        return_labels=return_labels,
        truncation_side=truncation_side,
    )


def _parse_chunk(body: Any, payload: dict[str, Any], url: str) -> ScoreResponse:
    """The server's answer to one chunk, checked to hold exactly one score per input."""
    response = _validated(ScoreResponse, body, url)
    expected = len(payload["texts"] if "texts" in payload else payload["responses"])
    if len(response.scores) != expected:
        raise RewardResponseError(f"{len(response.scores)} scores for {expected} inputs", url)
    return response


class _ClientBase:
    def __init__(
        self,
        base_urls: str | Sequence[str],
        *,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        max_items_per_request: int | None = None,
    ) -> None:
        """`timeout_s` bounds one attempt; `retry.max_total_s` bounds the whole call (all attempts)."""
        self.retry = retry or RetryPolicy()
        self._pool = _ServerPool(parse_base_urls(base_urls), self.retry.max_down_s)
        key = api_key if api_key is not None else os.environ.get("REWARD_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._attempt_timeout_s = timeout_s
        self._max_items = max_items_per_request

    @property
    def base_urls(self) -> list[str]:
        return list(self._pool.urls)

    def _attempt_options(self, deadline: float) -> dict[str, Any]:
        """httpx options of one attempt: its timeout (what is left of the call's deadline, at most
        `timeout_s`), also sent to the server so that it answers in time."""
        seconds = max(0.001, min(self._attempt_timeout_s, deadline - time.monotonic()))
        return {
            "timeout": httpx.Timeout(seconds, connect=min(seconds, 10.0)),
            "headers": {TIMEOUT_HEADER: str(max(1, int(seconds * 1000)))},
        }

    def _transport_failure(self, url: str, exc: httpx.TransportError) -> _RetryableFailure:
        hung = isinstance(exc, httpx.TimeoutException)
        self._pool.mark_down(url, self.retry.timeout_cooldown_s if hung else self.retry.down_cooldown_s)
        return _RetryableFailure(url, f"{type(exc).__name__}: {exc}")

    def _give_up(self, error: RetryError, what: str) -> RewardServiceUnavailable:
        last = error.last_attempt.exception()
        return RewardServiceUnavailable(
            f"reward service did not answer {what} (servers: {', '.join(self._pool.urls)})",
            attempts=error.last_attempt.attempt_number,
            last_error=str(last) if last else None,
        )


class RewardClient(_ClientBase):
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(base_urls, **kwargs)
        self._http = httpx.Client(headers=self._headers)

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, str]:
        deadline = time.monotonic() + self.retry.max_total_s

        def attempt() -> tuple[Any, str]:
            url = self._pool.next_url()
            options = self._attempt_options(deadline)
            try:
                response = self._http.request(method, url + path, json=body, **options)
            except httpx.TransportError as exc:
                raise self._transport_failure(url, exc) from exc
            self._pool.mark_up(url)
            return _check(response, url), url

        try:
            return Retrying(**self.retry.tenacity_kwargs())(attempt)
        except RetryError as error:
            raise self._give_up(error, f"{method} {path}") from None

    def scorers(self) -> ScorersResponse:
        body, url = self._call("GET", "/scorers")
        return _validated(ScorersResponse, body, url)

    def _chunk_size(self) -> int:
        if self._max_items is None:
            self._max_items = self.scorers().limits.max_items_per_request
        return self._max_items

    def score(
        self,
        texts: Sequence[str] | None = None,
        *,
        queries: Sequence[str] | None = None,
        responses: Sequence[str] | None = None,
        scorer: str | None = None,
        score_on: ScoreOn = "query_response",
        return_labels: bool = False,
        truncation_side: TruncationSide | None = None,
    ) -> ScoreResponse:
        """Score texts, or query/response pairs; one score per input, in order."""
        request = _build_request(texts, queries, responses, score_on, return_labels, truncation_side)
        parts = []
        for payload in _chunk_payloads(request, self._chunk_size()):
            body, url = self._call("POST", _score_path(scorer), payload)
            parts.append(_parse_chunk(body, payload, url))
        return _merge(parts)


class AsyncRewardClient(_ClientBase):
    """asyncio client; chunks of one call are sent concurrently. Use `async with`, or `aclose()`."""

    def __init__(self, base_urls: str | Sequence[str], **kwargs: Any) -> None:
        super().__init__(base_urls, **kwargs)
        self._http = httpx.AsyncClient(headers=self._headers)
        self._limits_lock = asyncio.Lock()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Any, str]:
        deadline = time.monotonic() + self.retry.max_total_s

        async def attempt() -> tuple[Any, str]:
            url = self._pool.next_url()
            options = self._attempt_options(deadline)
            try:
                response = await self._http.request(method, url + path, json=body, **options)
            except httpx.TransportError as exc:
                raise self._transport_failure(url, exc) from exc
            self._pool.mark_up(url)
            return _check(response, url), url

        try:
            return await AsyncRetrying(**self.retry.tenacity_kwargs())(attempt)
        except RetryError as error:
            raise self._give_up(error, f"{method} {path}") from None

    async def scorers(self) -> ScorersResponse:
        body, url = await self._call("GET", "/scorers")
        return _validated(ScorersResponse, body, url)

    async def _chunk_size(self) -> int:
        async with self._limits_lock:
            if self._max_items is None:
                self._max_items = (await self.scorers()).limits.max_items_per_request
        return self._max_items

    async def score(
        self,
        texts: Sequence[str] | None = None,
        *,
        queries: Sequence[str] | None = None,
        responses: Sequence[str] | None = None,
        scorer: str | None = None,
        score_on: ScoreOn = "query_response",
        return_labels: bool = False,
        truncation_side: TruncationSide | None = None,
    ) -> ScoreResponse:
        """Score texts, or query/response pairs; one score per input, in order."""
        request = _build_request(texts, queries, responses, score_on, return_labels, truncation_side)

        async def one(payload: dict[str, Any]) -> ScoreResponse:
            body, url = await self._call("POST", _score_path(scorer), payload)
            return _parse_chunk(body, payload, url)

        payloads = _chunk_payloads(request, await self._chunk_size())
        return _merge(list(await asyncio.gather(*(one(p) for p in payloads))))
