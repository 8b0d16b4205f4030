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
import json
import math
import os
import re
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

from shared.bounded_body import ACCEPT_ENCODING, BodyTooLarge, UnreadableBody, aread_bounded, read_bounded
from shared.errors import (
    RewardRequestError,
    RewardResponseError,
    RewardScoringError,
    RewardServiceUnavailable,
)
from shared.schemas import (
    TIMEOUT_HEADER,
    ScoreOn,
    ScoreRequest,
    ScoreResponse,
    ScorersResponse,
    TruncationSide,
)

RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})
ModelT = TypeVar("ModelT", ScoreResponse, ScorersResponse)
# How much of an answer the client reads, decompressed: a proxy's error page, a runaway server or a
# gzip bomb must not take the trainer's memory. A 200 to a scoring request may hold labels and
# ensemble members per item, hence the allowance per item; anything longer is refused unread.
BASE_ANSWER_BYTES = 256 * 1024
ANSWER_BYTES_PER_ITEM = 16 * 1024
# Of an error answer only the start is kept, for the message.
ERROR_BODY_BYTES = 64 * 1024
# RFC 9110: Retry-After is a delay in whole seconds, or an HTTP date.
_DELAY_SECONDS = re.compile(r"\s*[0-9]{1,10}\s*")


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


def api_key_or_env(api_key: str | None) -> str | None:
    """`api_key`, else $REWARD_API_KEY. A blank key (`REWARD_API_KEY=` in .env) is no key, as the
    service reads it: sending `Bearer ` would be refused by the service and is no valid header."""
    for key in (api_key, os.environ.get("REWARD_API_KEY")):
        if key is not None and key.strip():
            return key
    return None


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


def _retry_after_seconds(headers: httpx.Headers) -> float | None:
    """`Retry-After` in seconds (digits, or an HTTP date); None for anything else ("nan", "-1",
    "inf", "1e9"), which then gets the usual backoff rather than none."""
    value = headers.get("retry-after")
    if value is None:
        return None
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - time.time()) if math.isfinite(when) else None


def _detail(content: bytes) -> object:
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        return content[:500].decode("utf-8", "replace")
    return body.get("detail", body) if isinstance(body, dict) else body


def _not_a_number(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"{text[:40]} is not a finite number")
    return value


def _parse_json(content: bytes, url: str) -> Any:
    """A 200's body as JSON, refusing NaN and Infinity (Python's json would take them)."""
    try:
        return json.loads(content, parse_constant=_not_a_number, parse_float=_finite_float)
    except RecursionError:
        raise RewardResponseError("the JSON body is nested too deeply", url) from None
    except ValueError as exc:
        raise RewardResponseError(
            f"HTTP 200 body is not valid JSON ({exc}): {content[:200]!r}", url
        ) from None


def _answer(response: httpx.Response, content: bytes, url: str) -> Any:
    """The JSON body of a 200 answer, or the matching client error for any other status."""
    status = response.status_code
    if status in RETRYABLE_STATUSES:
        retry_after = _retry_after_seconds(response.headers)
        raise _RetryableFailure(url, f"HTTP {status}: {_detail(content)}", retry_after)
    if status == 424 or status >= 500:
        raise RewardScoringError(status, _detail(content), url)
    if status >= 400:
        raise RewardRequestError(status, _detail(content), url)
    if status != 200:
        # A redirect (not followed: it could send the texts elsewhere) or a 2xx without scores,
        # e.g. a proxy's 204 or 299.
        where = f" to {response.headers['location']!r}" if "location" in response.headers else ""
        raise RewardResponseError(f"HTTP {status}{where} instead of 200", url)
    return _parse_json(content, url)


def _too_large(limit: int, url: str) -> RewardResponseError:
    return RewardResponseError(f"the answer is larger than {limit} bytes (decompressed)", url)


def _declared_too_large(response: httpx.Response, limit: int) -> bool:
    declared = response.headers.get("content-length", "")
    return response.status_code == 200 and declared.isdigit() and int(declared) > limit


def _read(response: httpx.Response, limit: int, url: str) -> bytes:
    """The body, decompressed, up to `limit` bytes: a 200 past it is refused, an error cut."""
    try:
        return read_bounded(
            response.iter_raw(),
            response.headers.get("content-encoding", ""),
            limit,
            cut=response.status_code != 200,
        )
    except BodyTooLarge:
        raise _too_large(limit, url) from None
    except UnreadableBody as exc:
        raise RewardResponseError(str(exc), url) from None


async def _aread(response: httpx.Response, limit: int, url: str) -> bytes:
    try:
        return await aread_bounded(
            response.aiter_raw(),
            response.headers.get("content-encoding", ""),
            limit,
            cut=response.status_code != 200,
        )
    except BodyTooLarge:
        raise _too_large(limit, url) from None
    except UnreadableBody as exc:
        raise RewardResponseError(str(exc), url) from None


def _answer_limit(status: int, items: int) -> int:
    return BASE_ANSWER_BYTES + ANSWER_BYTES_PER_ITEM * items if status == 200 else ERROR_BODY_BYTES


def _validated(model: type[ModelT], body: Any, url: str) -> ModelT:
    try:
        # strict: `true` and "2.5" are not scores.
        return model.model_validate(body, strict=True)
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


def _merge(parts: list[tuple[ScoreResponse, str]]) -> ScoreResponse:
    first, _ = parts[0]
    if len(parts) == 1:
        return first
    labels = None
    if all(p.labels is not None for p, _ in parts):
        labels = [item for p, _ in parts for item in p.labels or []]
    members = None
    if any(p.members is not None for p, _ in parts):
        names = set(first.members or {})
        for part, url in parts:
            if set(part.members or {}) != names:
                raise RewardResponseError(
                    f"ensemble members {sorted(part.members or {})} differ from another chunk's "
                    f"{sorted(names)}",
                    url,
                )
        members = {
            name: [s for p, _ in parts for s in (p.members or {})[name]] for name in first.members or {}
        }
    return ScoreResponse(
        scorer=first.scorer,
        model=first.model,
        scores=[s for p, _ in parts for s in p.scores],
        truncated=sum(p.truncated for p, _ in parts),
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


def _payload_items(payload: dict[str, Any]) -> int:
    return len(payload["texts"] if "texts" in payload else payload["responses"])


def _parse_chunk(body: Any, payload: dict[str, Any], url: str) -> ScoreResponse:
    """The server's answer to one chunk, checked to hold exactly one finite score per input (and one
    label set and one score per ensemble member, when given)."""
    response = _validated(ScoreResponse, body, url)
    expected = _payload_items(payload)
    lists: dict[str, list[Any] | None] = {"scores": response.scores, "labels": response.labels}
    lists.update({f"members.{name}": scores for name, scores in (response.members or {}).items()})
    for name, values in lists.items():
        if values is not None and len(values) != expected:
            raise RewardResponseError(f"{len(values)} {name} for {expected} inputs", url)
    if payload.get("return_labels") and response.labels is None:
        raise RewardResponseError("labels were asked for but not sent", url)
    numbers = [*response.scores, *(s for scores in (response.members or {}).values() for s in scores)]
    numbers += [
        v
        for item in response.labels or []
        for label in item.values()
        for v in (label.logit, label.probability)
    ]
    if not all(math.isfinite(v) for v in numbers):
        # A huge integer (10**400) passes JSON parsing and becomes inf.
        raise RewardResponseError("a score is not a finite number", url)
    if not 0 <= response.truncated <= expected:
        raise RewardResponseError(f"truncated={response.truncated} for {expected} inputs", url)
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
        key = api_key_or_env(api_key)
        # Only encodings that shared.bounded_body decodes within the answer's size limit.
        self._headers = {"Accept-Encoding": ACCEPT_ENCODING}
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._attempt_timeout_s = timeout_s
        if max_items_per_request is not None and max_items_per_request < 1:
            raise ValueError(f"max_items_per_request must be at least 1, not {max_items_per_request}")
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

    def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, items: int = 0
    ) -> tuple[Any, str]:
        deadline = time.monotonic() + self.retry.max_total_s

        def attempt() -> tuple[Any, str]:
            url = self._pool.next_url()
            options = self._attempt_options(deadline)
            try:
                with self._http.stream(method, url + path, json=body, **options) as response:
                    limit = _answer_limit(response.status_code, items)
                    if _declared_too_large(response, limit):
                        raise _too_large(limit, url)
                    content = _read(response, limit, url)
            except httpx.TransportError as exc:
                raise self._transport_failure(url, exc) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # e.g. a corrupt gzip body
                raise RewardResponseError(f"{type(exc).__name__}: {exc}", url) from exc
            self._pool.mark_up(url)
            return _answer(response, content, url), url

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
            body, url = self._call("POST", _score_path(scorer), payload, _payload_items(payload))
            parts.append((_parse_chunk(body, payload, url), url))
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

    async def _call(
        self, method: str, path: str, body: dict[str, Any] | None = None, items: int = 0
    ) -> tuple[Any, str]:
        deadline = time.monotonic() + self.retry.max_total_s

        async def attempt() -> tuple[Any, str]:
            url = self._pool.next_url()
            options = self._attempt_options(deadline)
            try:
                async with self._http.stream(method, url + path, json=body, **options) as response:
                    limit = _answer_limit(response.status_code, items)
                    if _declared_too_large(response, limit):
                        raise _too_large(limit, url)
                    content = await _aread(response, limit, url)
            except httpx.TransportError as exc:
                raise self._transport_failure(url, exc) from exc
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # e.g. a corrupt gzip body
                raise RewardResponseError(f"{type(exc).__name__}: {exc}", url) from exc
            self._pool.mark_up(url)
            return _answer(response, content, url), url

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

        async def one(payload: dict[str, Any]) -> tuple[ScoreResponse, str]:
            body, url = await self._call("POST", _score_path(scorer), payload, _payload_items(payload))
            return _parse_chunk(body, payload, url), url

        payloads = _chunk_payloads(request, await self._chunk_size())
        return _merge(list(await asyncio.gather(*(one(p) for p in payloads))))
