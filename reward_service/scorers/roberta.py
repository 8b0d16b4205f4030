"""RobertaScorer: a sequence classifier whose reward is the raw logit of its `nothate` label.

Data path: texts -> token ids (`WindowTokenizer`, on a thread of this front-end process) -> packed
ids -> the scorer's `EngineGroup` (an engine process: batching, model on the device) -> logits per
item -> scores. The front end never loads the model: its labels, window and tokenizer come from the
first engine to load it (`ModelCard`), so this process needs neither PyTorch nor transformers. The
engines belong to the `EnginePool`.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Literal

import anyio

from reward_service.activation import softmax
from reward_service.engine.admission import PendingWork
from reward_service.engine.client import EngineClient
from reward_service.engine.pool import EngineGroup
from reward_service.engine.protocol import ModelCard, pack_token_ids
from reward_service.errors import InputTooLong, NotReady, Overloaded
from reward_service.metrics import ServiceMetrics
from reward_service.model_source import check_model_source
from reward_service.request_context import requests_in_progress
from reward_service.scorers.base import EngineCall, ScoreOptions, ScoreOutput, Scorer
from reward_service.scorers.tokenization import WindowTokenizer
from reward_service.settings import ServiceSettings
from shared.schemas import LabelScore, ScorerInfo

log = logging.getLogger(__name__)

REWARD_LABEL = "nothate"
# Requests up to this many characters are tokenized on the event loop (well under a millisecond);
# larger ones in a worker thread, so that one large request cannot stall the others.
INLINE_TOKENIZE_CHARS = 8192


@dataclass(frozen=True)
class ClassifierCard:
    """What the front end needs of a classifier: its labels, the reward's label, its tokenizer."""

    label_names: list[str]
    reward_index: int
    tokenizer: WindowTokenizer


def classifier_card(model: ModelCard, model_path: str) -> ClassifierCard:
    """The classifier's card from its engine's `ModelCard`; raises if it has no reward label."""
    reward_index = next((i for i, label in enumerate(model.labels) if label.lower() == REWARD_LABEL), None)
    if reward_index is None:
        raise ValueError(f"model {model_path} has no '{REWARD_LABEL}' label (labels: {sorted(model.labels)})")
    return ClassifierCard(model.labels, reward_index, WindowTokenizer(model.tokenizer_json, model.max_tokens))


def _seconds_left(deadline: float) -> float | None:
    """Seconds before `deadline` (`time.monotonic()`); None: no deadline. At least a millisecond, so
    a deadline already past reads as one."""
    left_s = deadline - time.monotonic()
    return max(1e-3, left_s) if math.isfinite(left_s) else None


class RobertaScorer(Scorer):
    kind = "classifier"
    class_logits = True

    def __init__(
        self, name: str, settings: ServiceSettings, metrics: ServiceMetrics, engines: EngineGroup
    ) -> None:
        self.name = name
        self.model_path = settings.roberta_model
        self._max_items = settings.max_items_per_request
        self._retry_after_s = settings.retry_after_s
        self._metrics = metrics
        self._engines = engines
        self._card: ClassifierCard | None = None
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._error: str | None = None
        # Requests this front end has taken on and not answered.
        self._pending = PendingWork()

    async def start(self) -> None:
        try:
            check_model_source(self.model_path)  # a missing directory fails here, not in each engine
            model = await self._engines.model_card()
            if model is None:
                self._error = self._engines.first_error() or f"no engine could load {self.model_path}"
                self._state = "failed"
                return
            self._card = await anyio.to_thread.run_sync(classifier_card, model, self.model_path)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /scorers
            log.exception("could not load scorer %s from %s", self.name, self.model_path)
            self._error = f"failed to load {self.model_path}: {type(exc).__name__}: {exc}"
            self._state = "failed"
            return
        self._state = "ready"

    async def close(self) -> None:
        """Nothing of its own: the engine pool closes the engines."""

    @property
    def max_tokens(self) -> int:
        return self._card.tokenizer.max_tokens if self._card is not None else 512

    @property
    def label_names(self) -> list[str]:
        return self._card.label_names if self._card is not None else []

    @property
    def ready(self) -> bool:
        return self._state == "ready" and self._engines.ready

    def info(self) -> ScorerInfo:
        statuses = self._engines.statuses
        state, error = self._state, self._error
        if state == "ready" and not self.ready:
            failed = self._engines.failed
            state, error = ("failed", self._engines.first_error()) if failed else ("loading", None)
        first = next((s for s in statuses if s.device), None)
        return ScorerInfo(
            name=self.name,
            kind=self.kind,
            model=self.model_path,
            device=",".join(s.device for s in statuses if s.device) or None,
            dtype=first.dtype if first else None,
            state=state,
            error=error,
            labels=self.label_names or None,
            max_tokens=self.max_tokens,
        )

    def _not_ready_detail(self) -> str:
        info = self.info()
        return info.error or info.state

    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        card = self._card
        if card is None:
            detail = f"scorer '{self.name}' is not ready: {self._not_ready_detail()}"
            raise NotReady(detail, self._retry_after_s)
        engine = self._engines.pick(self._not_ready_detail)
        estimate = card.tokenizer.estimate_tokens(texts)
        self._admit(engine, card, estimate, options.deadline, len(texts))
        with self._pending.holding(estimate, options.deadline):
            return await self._score(engine, card, texts, options)

    def reserve_unread(self, body_bytes: int, deadline: float) -> AbstractContextManager[None]:
        card = self._card
        if card is None or not self.ready:
            return nullcontext()  # the scoring path says why it cannot score, once the body is read
        engine = self._engines.pick(self._not_ready_detail)
        estimate = card.tokenizer.estimate_body_tokens(body_bytes, self._max_items)
        self._admit(engine, card, estimate, deadline, items=None)
        return self._pending.holding(estimate, deadline)

    def _admit(
        self, engine: EngineClient, card: ClassifierCard, estimate: int, deadline: float, items: int | None
    ) -> None:
        """Refuse before tokenizing (503) a request that cannot finish before its deadline, given the
        work this front end has already taken on: tokenization and the engine's round trip both
        depend on it, and the engine checks again with the exact token count. `items`: None for a
        body not read yet, whose refusal reward_requests_total counts but reward_rejected_items
        cannot (its items are unknown)."""
        tokenizer_rate = card.tokenizer.rate.tokens_per_s
        if tokenizer_rate is None:
            return  # no rate measured yet: no evidence that it cannot finish
        # The engine's rate comes with its answers: while every request ends at its deadline before
        # the engine answers one, tokenizing alone bounds how fast this front end can go.
        engine_rate = engine.tokens_per_s
        rate = tokenizer_rate if engine_rate is None else 1 / (1 / engine_rate + 1 / tokenizer_rate)
        why = self._pending.refusal(estimate, _seconds_left(deadline), rate)
        if why is not None:
            if items is not None:
                self._metrics.rejected.labels(self.name, "deadline").inc(items)
            raise Overloaded(
                f"scorer '{self.name}' cannot score this request before its deadline: {why}",
                self._retry_after_s,
            )

    async def _score(
        self, engine: EngineClient, card: ClassifierCard, texts: list[str], options: ScoreOptions
    ) -> ScoreOutput:
        started = time.perf_counter()
        if sum(map(len, texts)) <= INLINE_TOKENIZE_CHARS:
            # Tokenizing a few short texts costs less than the hop to a worker thread and back.
            tokenized = card.tokenizer.timed_tokenize(texts, options.truncation_side)
        else:
            tokenized = await anyio.to_thread.run_sync(
                card.tokenizer.timed_tokenize, texts, options.truncation_side
            )
        if not options.truncate and tokenized.first_truncated is not None:
            raise InputTooLong(
                f"input {tokenized.first_truncated} is longer than the model's window of {self.max_tokens} "
                f"tokens ({tokenized.truncated} input(s) are); shorten it or allow truncation"
            )
        token_ids, lengths = pack_token_ids(tokenized.ids)
        tokenization_s = time.perf_counter() - started
        # Alone in this process (no other request being parsed, tokenized or answered), this
        # request may have the engine use the core the front end would otherwise need.
        sender_idle = requests_in_progress() <= 1
        result = await engine.score(token_ids, lengths, _seconds_left(options.deadline) or 0.0, sender_idle)
        logits = result.logits
        self._metrics.truncated.labels(self.name).inc(tokenized.truncated)
        scores = [row[card.reward_index] for row in logits]
        labels = self._label_scores(logits) if options.return_labels else None
        return ScoreOutput(
            scores=scores,
            truncated=tokenized.truncated,
            labels=labels,
            input_tokens=sum(lengths),
            engine_calls=[EngineCall(tokenization_s, result.queue_s, result.inference_s)],
        )

    def _label_scores(self, logits: list[list[float]]) -> list[dict[str, LabelScore]]:
        return [
            {
                name: LabelScore(logit=logit, probability=probability)
                for name, logit, probability in zip(self.label_names, row, softmax(row), strict=True)
            }
            for row in logits
        ]
