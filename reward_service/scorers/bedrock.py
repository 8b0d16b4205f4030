"""BedrockJudge: Claude on Amazon Bedrock rates each text, through the Converse API.

Data path: texts -> distinct texts not in the LRU cache -> worker threads, at most
REWARD_BEDROCK_MAX_CONCURRENCY at once for live requests, sharing one boto3 client -> `converse` with
temperature 0 and a forced tool call whose schema is one number -> the number, checked against the
template's range -> x scale + offset. A reply with more than one such call, or with keys besides
`score`, is ambiguous and fails like any malformed one (424).

Retries have one layer, here: botocore makes one attempt per call, and tenacity retries transient
faults with exponential backoff and full jitter for at most REWARD_BEDROCK_MAX_ATTEMPTS attempts, within
REWARD_BEDROCK_RETRY_TOTAL_S of the first and never past the request's deadline. A text that still
fails makes the whole request fail (502/504), because an invented number must never reach a trainer.

When a request ends early (its deadline, the client gone), its calls not yet started never start,
its retries stop, and the calls already on the wire are abandoned to finish in their threads
without holding the concurrency that later requests get.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import Counter
from functools import partial
from typing import Any, Literal

import anyio
import boto3
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from reward_service.errors import NotReady, UpstreamFailed, UpstreamRejected, UpstreamTimeout
from reward_service.metrics import ServiceMetrics
from reward_service.scorers.base import ScoreOptions, ScoreOutput, Scorer
from reward_service.scorers.judge_templates import (
    JudgeTemplate,
    MalformedReply,
    load_template,
    parse_score_text,
)
from reward_service.scorers.score_cache import ScoreCache
from reward_service.settings import ServiceSettings
from shared.schemas import ScorerInfo

log = logging.getLogger(__name__)

TOOL_NAME = "record_score"
# stopReasons meaning Bedrock withheld the answer: very toxic input can trip the content filter.
_WITHHELD = {"content_filtered", "guardrail_intervened"}
# Worth another try later; botocore itself does not retry ModelTimeoutException (HTTP 408).
_TRANSIENT_CODES = {
    "ThrottlingException",
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelTimeoutException",
    "ModelNotReadyException",
}
_TIMEOUT_CODES = {"ModelTimeoutException"}
_MESSAGE_CHARS = 300
# The judge's retry waits: random, below a cap of 0.2 s that doubles per retry up to 8 s.
RETRY_FIRST_CAP_S = 0.2
RETRY_MAX_CAP_S = 8.0


class JudgeFailure(Exception):
    """One text could not be scored; `reason` (an AWS error code, a stopReason, 'malformed', ...) groups
    failures in the request's error message and in metrics."""

    def __init__(self, reason: str, message: str, timeout: bool = False, permanent: bool = False) -> None:
        self.reason = reason
        self.message = message[:_MESSAGE_CHARS]
        self.timeout = timeout
        self.permanent = permanent
        super().__init__(f"{reason}: {self.message}")


def is_transient(exc: BaseException) -> bool:
    """Throttling, 5xx, model timeouts, and connection faults or timeouts."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return exc.response.get("Error", {}).get("Code") in _TRANSIENT_CODES or status == 429 or status >= 500
    return isinstance(exc, BotoConnectionError | HTTPClientError)


def as_failure(exc: ClientError | BotoCoreError) -> JudgeFailure:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = error.get("Code") or "ClientError"
        return JudgeFailure(
            code,
            error.get("Message") or str(exc),
            timeout=code in _TIMEOUT_CODES,
            permanent=not is_transient(exc),
        )
    return JudgeFailure(
        type(exc).__name__, str(exc), timeout=isinstance(exc, ReadTimeoutError | ConnectTimeoutError)
    )


class BedrockJudge(Scorer):
    kind = "llm-judge"

    def __init__(self, name: str, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.name = name
        self.model_id = settings.bedrock_model_id
        self._settings = settings
        self._metrics = metrics
        self._cache = ScoreCache(settings.bedrock_cache_size)
        self._template: JudgeTemplate | None = None
        self._client: BaseClient | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._region: str | None = None
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._error: str | None = None

    async def start(self) -> None:
        # botocore's DEBUG records show request headers, session tokens included: credentials are never
        # to be logged, whatever REWARD_LOG_LEVEL says.
        botocore_log = logging.getLogger("botocore")
        if botocore_log.getEffectiveLevel() < logging.INFO:
            botocore_log.setLevel(logging.INFO)
        try:
            self._template = load_template(self._settings.bedrock_template)
            self._client = await anyio.to_thread.run_sync(self._connect)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /scorers; other scorers keep serving
            self._error = f"Bedrock is not usable: {exc}"
            self._state = "failed"
            log.error("scorer %s: %s", self.name, self._error)
            return
        self._limiter = anyio.CapacityLimiter(self._settings.bedrock_max_concurrency)
        self._state = "ready"
        log.info(
            "scorer %s ready: %s in %s, template %s, %d calls at once",
            self.name,
            self.model_id,
            self._region,
            self._template.name,
            self._settings.bedrock_max_concurrency,
        )

    def _connect(self) -> BaseClient:
        s = self._settings
        session = boto3.session.Session()
        # botocore reads AWS_DEFAULT_REGION and the profile but not AWS_REGION, which AWS runtimes set.
        region = s.bedrock_region or os.environ.get("AWS_REGION") or session.region_name
        if not region:
            raise RuntimeError("no AWS region; set REWARD_BEDROCK_REGION, AWS_REGION or AWS_DEFAULT_REGION")
        # Only whether credentials exist is checked (and never logged); a refusal surfaces per request.
        if session.get_credentials() is None:
            raise RuntimeError(
                "no AWS credentials in the standard chain (environment, AWS_PROFILE and ~/.aws files, SSO, "
                "container or instance role)"
            )
        self._region = region
        config = Config(
            region_name=region,
            # One attempt: the judge retries, with a budget that knows the request's deadline.
            retries={"mode": "standard", "total_max_attempts": 1},
            # Room for the calls of requests that ended and are still finishing, besides live ones.
            max_pool_connections=2 * s.bedrock_max_concurrency,
            connect_timeout=s.bedrock_connect_timeout_s,
            read_timeout=s.bedrock_read_timeout_s,
            user_agent_extra="rlaif-reward",
        )
        return session.client("bedrock-runtime", endpoint_url=s.bedrock_endpoint_url, config=config)

    async def close(self) -> None:
        self._limiter = None
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def info(self) -> ScorerInfo:
        return ScorerInfo(
            name=self.name,
            kind=self.kind,
            model=self.model_id,
            device=f"bedrock:{self._region}" if self._region else None,
            state=self._state,
            error=self._error,
        )

    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        limiter, template = self._limiter, self._template
        if limiter is None or template is None or not self.ready:
            raise NotReady(
                f"scorer '{self.name}' is not ready: {self._error or self._state}",
                self._settings.retry_after_s,
            )
        keys = {text: (self.model_id, template.fingerprint, text) for text in texts}
        answers: dict[str, float] = {}
        for text, key in keys.items():
            cached = self._cache.get(key)
            if cached is not None:
                answers[text] = cached
        if answers:
            self._metrics.cache_hits.labels(self.name).inc(len(answers))
        todo = [text for text in keys if text not in answers]
        ended = threading.Event()  # the request is over: start no call or retry for it
        # anyio copies the context into the thread, so the request id reaches the calls' log lines.
        # On cancellation, abandon_on_cancel hands the limiter's slot back at once, while the
        # thread finishes the call on the wire (bounded by the read timeout) on its own.
        calls = [
            anyio.to_thread.run_sync(
                partial(self._judge, text, template, keys[text], options.deadline, ended),
                abandon_on_cancel=True,
                limiter=limiter,
            )
            for text in todo
        ]
        try:
            results = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            ended.set()
        failures: dict[str, JudgeFailure] = {}
        for text, result in zip(todo, results, strict=True):
            if isinstance(result, JudgeFailure):
                failures[text] = result
            elif isinstance(result, BaseException):
                raise result
            else:
                answers[text] = result
        if failures:
            raise self._request_error(texts, failures)
        scale, offset = self._settings.bedrock_scale, self._settings.bedrock_offset
        return ScoreOutput(scores=[answers[text] * scale + offset for text in texts])

    def _request_error(self, texts: list[str], failures: dict[str, JudgeFailure]) -> UpstreamFailed:
        """One error for the request: how many texts failed, grouped by reason with AWS's message."""
        failed = sum(1 for text in texts if text in failures)
        reasons = Counter(f.reason for f in failures.values())
        example = {f.reason: f.message for f in failures.values()}
        summary = "; ".join(f"{n} x {reason}: {example[reason]}" for reason, n in reasons.most_common())
        detail = (
            f"scorer '{self.name}' ({self.model_id}) could not score {failed} of {len(texts)} texts, "
            f"so none are returned: {summary}"
        )
        log.warning("%s", detail)
        if any(f.permanent for f in failures.values()):
            return UpstreamRejected(detail)
        timeouts_only = all(f.timeout for f in failures.values())
        return UpstreamTimeout(detail) if timeouts_only else UpstreamFailed(detail)

    def _judge(
        self,
        text: str,
        template: JudgeTemplate,
        key: tuple[str, str, str],
        deadline: float,
        ended: threading.Event,
    ) -> float:
        """The judge's number for one text (worker thread); JudgeFailure when there is none.

        Cached here rather than by the caller, so an answer is kept even when its request was cancelled.
        No retry starts after the request's deadline (`time.monotonic()`) or once the request has
        `ended`: nobody would get its answer.
        """
        if ended.is_set():
            raise JudgeFailure("abandoned", "the request ended before the call", timeout=True)
        if time.monotonic() >= deadline:
            raise JudgeFailure("deadline", "the request's deadline passed before the call", timeout=True)
        try:
            out_of_time = threading.Event()  # set when the deadline, not the budget, stopped retries
            response = self._retrying(deadline, ended, out_of_time)(self._converse, text, template)
            value = self._read(response, template)
        except JudgeFailure as failure:
            self._metrics.judge_calls.labels(self.name, failure.reason).inc()
            raise
        except (ClientError, BotoCoreError) as exc:
            failure = as_failure(exc)
            if out_of_time.is_set() and not failure.permanent:
                # Retrying could still have helped: the request ran out of time (504), it was not
                # refused (502).
                failure = JudgeFailure(
                    "deadline",
                    f"no time left for another retry before the request's deadline; last error "
                    f"{failure.reason}: {failure.message}",
                    timeout=True,
                )
            self._metrics.judge_calls.labels(self.name, failure.reason).inc()
            raise failure from exc
        except Exception:
            self._metrics.judge_calls.labels(self.name, "unexpected_error").inc()
            raise
        self._metrics.judge_calls.labels(self.name, "ok").inc()
        self._cache.put(key, value)
        return value

    def _retrying(self, deadline: float, ended: threading.Event, out_of_time: threading.Event) -> Retrying:
        # A new controller per text: Retrying keeps per-call state and texts run on many threads.
        def past_deadline(state: RetryCallState) -> bool:
            if ended.is_set() or time.monotonic() + (state.upcoming_sleep or 0.0) >= deadline:
                out_of_time.set()
                return True
            return False

        return Retrying(
            retry=retry_if_exception(is_transient),
            stop=stop_after_attempt(self._settings.bedrock_max_attempts)
            | stop_after_delay(self._settings.bedrock_retry_total_s)
            | past_deadline,
            # "Full jitter": a random wait below a cap that doubles per retry, so texts throttled
            # together do not come back together, and a rare streak of refusals costs little.
            wait=wait_random_exponential(multiplier=RETRY_FIRST_CAP_S, max=RETRY_MAX_CAP_S),
            before_sleep=self._count_retry,
            reraise=True,
        )

    def _count_retry(self, state: RetryCallState) -> None:
        self._metrics.judge_retries.labels(self.name).inc()

    def _converse(self, text: str, template: JudgeTemplate) -> dict[str, Any]:
        assert self._client is not None
        request: dict[str, Any] = {
            "modelId": self.model_id,
            "system": [{"text": template.system}],
            "messages": [{"role": "user", "content": [{"text": template.render(text)}]}],
            # temperature only: newer Claude models reject temperature and topP together.
            "inferenceConfig": {"temperature": 0.0, "maxTokens": self._settings.bedrock_max_tokens},
        }
        if self._settings.bedrock_use_tools:
            request["toolConfig"] = {
                "tools": [
                    {
                        "toolSpec": {
                            "name": TOOL_NAME,
                            "description": f"Record the score. {template.score_description}",
                            "inputSchema": {"json": template.json_schema()},
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": TOOL_NAME}},
            }
        try:
            return self._client.converse(**request)
        except (ClientError, BotoCoreError):
            raise
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            # botocore failed to parse a 200 reply (not UTF-8, content not a list, ...): the model's
            # answer is unreadable, like any other malformed one. UnicodeDecodeError is a ValueError.
            raise JudgeFailure(
                "malformed", f"the reply could not be parsed: {type(exc).__name__}: {exc}", permanent=True
            ) from exc

    def _read(self, response: dict[str, Any], template: JudgeTemplate) -> float:
        """The number in a Converse reply: the forced tool's input, else parsed from the text."""
        stop = str(response.get("stopReason", ""))
        if stop in _WITHHELD:
            # Deterministic at temperature 0: asking again gives the same refusal.
            raise JudgeFailure(
                stop, "Bedrock withheld the judge's answer (content filter or guardrail)", permanent=True
            )
        try:
            content = _content_blocks(response)
            tools = [block["toolUse"] for block in content if "toolUse" in block]
            if len(tools) > 1:
                raise MalformedReply(f"ambiguous: {len(tools)} tool calls, not one")
            if tools:
                tool = tools[0]
                if not isinstance(tool, dict) or tool.get("name") != TOOL_NAME:
                    raise MalformedReply(f"a tool call {str(tool)[:80]!r} that is not {TOOL_NAME}")
                arguments = tool.get("input")
                if not isinstance(arguments, dict) or "score" not in arguments:
                    raise MalformedReply(f"tool input {str(arguments)[:80]!r} has no 'score'")
                if set(arguments) != {"score"}:
                    raise MalformedReply(f"ambiguous: tool input with keys {sorted(map(str, arguments))[:5]}")
                return template.check(arguments["score"])
            text = "".join(str(block.get("text", "")) for block in content)
            if text.strip():
                return parse_score_text(text, template)
            raise MalformedReply("the reply has neither a tool call nor text")
        except MalformedReply as exc:
            hint = " (reply cut at REWARD_BEDROCK_MAX_TOKENS)" if stop == "max_tokens" else ""
            # The model answered, and asking again at temperature 0 gives the same answer: a permanent
            # failure (424), which clients do not retry.
            raise JudgeFailure("malformed", f"{exc}; stopReason {stop!r}{hint}", permanent=True) from exc


def _content_blocks(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The reply's content blocks, or MalformedReply when the reply does not have the Converse shape."""
    output = response.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if content is None:
        return []
    if not isinstance(content, list) or not all(isinstance(block, dict) for block in content):
        raise MalformedReply(f"content {str(content)[:80]!r} is not a list of blocks")
    return content
