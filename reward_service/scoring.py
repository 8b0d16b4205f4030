"""The scoring path every route shares, once the route has validated its body: which scorer (404,
or 422 for a capability it lacks), the request's deadline, cancellation when the client goes away,
one error per failure, and the latency and item metrics at the path's single exit. The request
count is kept by `request_counter.RequestCounter`, which sees every answer; `resolve_scorer` names
the scorer for it.

A route resolves its scorer, checks its body's limits (`validation`), calls `score_texts` with the
texts, and translates the `ScoreOutput` back into its protocol's answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from contextlib import AbstractContextManager, nullcontext
from typing import TypeVar

import anyio
from fastapi import Request

from reward_service.allocator import LARGE_REQUEST_CHARS, release_freed_memory
from reward_service.body_decoding import OFF_LOOP_BYTES
from reward_service.deadline import DEFAULT_BUDGET_SETTING, budget_variable, request_budget_s
from reward_service.errors import DeadlineExceeded, InvalidInput, NoClassLogits, ScoringFailed, ServiceError
from reward_service.metrics import ServiceMetrics
from reward_service.request_context import record_engine_call
from reward_service.request_counter import UNKNOWN_SCORER_LABEL, note_scorer_label
from reward_service.scorers import ScoreOptions, ScoreOutput, Scorer, ScorerRegistry
from reward_service.settings import ServiceSettings
from shared.schemas import TIMEOUT_HEADER, TruncationSide

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client closed the connection before its scores were ready."""


def registry_of(request: Request) -> ScorerRegistry:
    return request.app.state.registry


def settings_of(request: Request) -> ServiceSettings:
    return request.app.state.settings


def metrics_of(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it if the client disconnects first.

    The body has been read by now, so the next ASGI message can only be the disconnect. Cancelling
    the scorer call makes the engine client send CancelItems, and the engine drops the queued items.
    """
    work_task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        done, _ = await asyncio.wait({work_task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when this request is cancelled itself (shutdown past its grace period).
        watcher.cancel()
        if not work_task.done():
            work_task.cancel()
    if work_task not in done:
        raise ClientGone
    return work_task.result()


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def resolve_scorer(request: Request, scorer_name: str | None, class_logits_hint: str | None = None) -> Scorer:
    """The scorer `scorer_name` names (None: the default; 404 if unknown), named for the request count.

    With `class_logits_hint`, a scorer that gives one number per text rather than a logit per class is
    refused before any work (422, the hint says what to send instead)."""
    registry = registry_of(request)
    # Labels only from configured names: a label per arbitrary URL would grow /metrics without bound.
    label = registry.default if scorer_name is None else scorer_name
    note_scorer_label(request.scope, label if label in registry.scorers else UNKNOWN_SCORER_LABEL)
    scorer = registry.get(scorer_name)
    if class_logits_hint is not None and not scorer.class_logits:
        raise NoClassLogits(
            f"scorer '{scorer.name}' gives one score per text, not a logit per class, so it has no "
            f"class probabilities: {class_logits_hint}"
        )
    return scorer


def admit_before_reading(request: Request) -> AbstractContextManager[None]:
    """Refuse (503) a large `/score` request that cannot finish before its deadline from its headers
    (`Content-Length` and the deadline), before its body is read: with several large bodies arriving
    at once, reading and decoding them is itself seconds of work that a refusal should not wait
    for. The scorer counts the body's guessed work as pending until it is decoded; the scoring path
    then checks again with the texts. Small bodies are read and checked in well under a
    millisecond, so they skip this."""
    length = request.headers.get("content-length", "")
    if not length.isdigit() or int(length) <= OFF_LOOP_BYTES:
        return nullcontext()
    name = request.path_params.get("scorer")
    try:
        budget_s = request_budget_s(request.headers, settings_of(request))
    except InvalidInput:
        return nullcontext()  # answered once the body is checked, as for a small body
    if name is not None and name not in registry_of(request).scorers:
        return nullcontext()  # the same: a 404 after the body's own errors
    scorer = resolve_scorer(request, name)
    return scorer.reserve_unread(int(length), time.monotonic() + budget_s)


async def score_texts(
    request: Request,
    route: str,
    scorer: Scorer,
    texts: list[str],
    *,
    truncation_side: TruncationSide | None = None,
    return_labels: bool = False,
    truncate: bool = True,
    budget_from: float | None = None,
    budget_setting: str = DEFAULT_BUDGET_SETTING,
) -> ScoreOutput:
    """`scorer`'s scores of `texts` (already checked against the limits), within the request's deadline.

    `truncate=False` refuses inputs longer than the model's window (413) instead of cutting them.
    `budget_from`: the `time.monotonic()` the request's budget counts from, when it is scored in
    several calls (one deadline for all of them); else now. `budget_setting`: the setting that bounds
    the route's requests when the client sends no timeout header.
    """
    settings = settings_of(request)
    started = time.perf_counter()
    budget_s = request_budget_s(request.headers, settings, budget_setting)
    deadline = (time.monotonic() if budget_from is None else budget_from) + budget_s
    options = ScoreOptions(
        truncation_side=truncation_side or settings.truncation_side,
        return_labels=return_labels,
        truncate=truncate,
        deadline=deadline,
    )
    output = (
        await _score_within(request, route, scorer, texts, options, budget_s, budget_setting)
        if texts
        else ScoreOutput(scores=[], labels=[] if return_labels else None)
    )
    # The scorer returns its engine calls' timings; the response's timing headers show them.
    for call in output.engine_calls:
        record_engine_call(call.tokenization_s, call.queue_s, call.inference_s)
    await _record(metrics_of(request), scorer, texts, started)
    return output


async def _score_within(
    request: Request,
    route: str,
    scorer: Scorer,
    texts: list[str],
    options: ScoreOptions,
    budget_s: float,
    budget_setting: str,
) -> ScoreOutput:
    """The scorer's output, or the one ServiceError that says why there is none."""

    def late() -> DeadlineExceeded:
        return DeadlineExceeded(
            f"scorer '{scorer.name}' could not score {len(texts)} input(s) within the request's deadline "
            f"({budget_s:.1f} s: {TIMEOUT_HEADER} less a margin, or {budget_variable(budget_setting)})"
        )

    left_s = options.deadline - time.monotonic()
    if left_s <= 0:  # spent by the request's earlier windows: nothing is started
        raise late()
    try:
        async with asyncio.timeout(left_s):
            return await _unless_disconnected(request, scorer.score(texts, options))
    except TimeoutError:
        raise late() from None
    except (ServiceError, ClientGone, asyncio.CancelledError):
        # A shutdown is the only thing that cancels a request; ShutdownGuard answers it with 503.
        raise
    except Exception as exc:
        log.exception("scorer '%s' failed unexpectedly on %s", scorer.name, route)
        raise ScoringFailed(f"scorer '{scorer.name}' failed: {type(exc).__name__}: {exc}") from exc


async def _record(metrics: ServiceMetrics, scorer: Scorer, texts: list[str], started: float) -> None:
    metrics.items.labels(scorer.name).inc(len(texts))
    if sum(map(len, texts)) > LARGE_REQUEST_CHARS:
        await anyio.to_thread.run_sync(release_freed_memory)
    metrics.request_latency.labels(scorer.name).observe(time.perf_counter() - started)
