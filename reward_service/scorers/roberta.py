"""RobertaScorer: a sequence classifier whose reward is the raw logit of its `nothate` label.

Data path: texts -> token ids (tokenizer thread of this front-end process, truncated to the
window) -> packed ids -> EngineClient -> engine process (batching, model on the device) -> logits
per item -> scores. The front end never loads the weights: it reads the model's config for the
labels and window, and its tokenizer.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Literal

import anyio
import zmq.asyncio
from tokenizers import Tokenizer
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from reward_service.engine.admission import Queued, refusal_reason
from reward_service.engine.client import EngineClient
from reward_service.engine.protocol import EngineConfig, pack_token_ids
from reward_service.engine.supervisor import EngineSupervisor
from reward_service.errors import InputTooLong, NotReady, Overloaded
from reward_service.metrics import ServiceMetrics
from reward_service.model_source import check_model_source
from reward_service.request_context import record_engine_call
from reward_service.scorers.base import ScoreOptions, ScoreOutput, Scorer
from reward_service.settings import ServiceSettings
from shared.schemas import LabelScore, ScorerInfo, TruncationSide

log = logging.getLogger(__name__)

REWARD_LABEL = "nothate"
# A text longer than this many characters per window token cannot fit the window in any tokenizer
# this service meets (English averages about 4 per token); past it, characters are cut before
# tokenizing. BOUNDARY_TOKENS: how far the window must stay from that cut for the ids to be exact.
CHARS_PER_TOKEN = 8
# For the admission estimate, before tokenizing: English BPE text runs about 4 characters a token.
CHARS_PER_TOKEN_GUESS = 4
# Tokenization rates are measured on requests this large or larger (small ones time overheads).
MEASURED_TOKENIZE_TOKENS = 4096
BOUNDARY_TOKENS = 16
TOKENIZE_CHUNK = 64


@dataclass
class Tokenized:
    ids: list[list[int]]
    truncated: int
    first_truncated: int | None = None


def engine_configs(name: str, settings: ServiceSettings) -> list[EngineConfig]:
    """One engine per device of REWARD_DEVICES (the supervisor gives each its socket address)."""
    return [
        EngineConfig(
            scorer=name,
            address="",
            model_path=settings.roberta_model,
            device=device,
            dtype=settings.dtype,
            max_batch_tokens=settings.max_batch_tokens,
            max_batch_items=settings.max_batch_items,
            max_wait_ms=settings.max_wait_ms,
            queue_capacity=settings.queue_capacity,
        )
        for device in settings.engine_devices
    ]


class RobertaScorer(Scorer):
    kind = "classifier"
    class_logits = True

    def __init__(self, name: str, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.name = name
        self.model_path = settings.roberta_model
        self._settings = settings
        self._metrics = metrics
        self._supervisor: EngineSupervisor | None = None
        self._metrics_dir: str | None = None
        self._context: zmq.asyncio.Context | None = None
        self._engines: list[EngineClient] = []
        self._truncating: dict[str, Tokenizer] = {}
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._error: str | None = None
        self.max_tokens: int = 512
        self.label_names: list[str] = []
        self._reward_index = 0
        # Requests this front end has taken on and not answered: estimated tokens, deadline.
        self._pending: dict[object, tuple[int, float]] = {}
        self._tokenize_tokens_per_s: float | None = None

    async def start(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._load_tokenizer_and_config)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /scorers
            log.exception("could not load scorer %s from %s", self.name, self.model_path)
            self._error = f"failed to load {self.model_path}: {type(exc).__name__}: {exc}"
            self._state = "failed"
            return
        addresses = self._settings.engine_addresses
        if not addresses:
            # Nobody started engines for us (one front-end process): start and own them.
            self._metrics_dir = tempfile.mkdtemp(prefix="reward-metrics-")
            self._supervisor = EngineSupervisor(
                self.name,
                engine_configs(self.name, self._settings),
                self._metrics_dir,
                self._settings.log_level,
                self._settings.log_format,
            )
            self._supervisor.start()
            self._metrics.add_engine_metrics(self._metrics_dir)
            addresses = self._supervisor.addresses
        self._context = zmq.asyncio.Context()
        self._engines = [EngineClient(a, self._context, self._settings.retry_after_s) for a in addresses]
        for engine in self._engines:
            await engine.start()
        self._state = "ready"

    def _load_tokenizer_and_config(self) -> None:
        check_model_source(self.model_path)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        config = AutoConfig.from_pretrained(self.model_path)
        id2label = {int(i): str(label) for i, label in config.id2label.items()}
        self.label_names = [id2label[i] for i in sorted(id2label)]
        self._reward_index = self._find_reward_index(id2label)
        # RoBERTa's position table has two slots reserved for the padding offset.
        window = config.max_position_embeddings
        if config.model_type in {"roberta", "xlm-roberta"}:
            window -= 2
        self.max_tokens = min(window, tokenizer.model_max_length)
        # One backend tokenizer per truncation side, each configured once: the backend's truncation
        # setting is shared state, and tokenization runs on several threads at once.
        self._truncating = {side: self._backend(tokenizer, side) for side in ("left", "right")}

    def _backend(self, tokenizer: PreTrainedTokenizerBase, side: str) -> Tokenizer:
        if not tokenizer.is_fast:
            raise ValueError(f"{self.model_path} has no fast tokenizer (tokenizer.json); one is required")
        backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        backend.no_padding()
        backend.enable_truncation(self.max_tokens, direction=side)
        return backend

    def _find_reward_index(self, id2label: dict[int, str]) -> int:
        for index, label in id2label.items():
            if label.lower() == REWARD_LABEL:
                return index
        raise ValueError(
            f"model {self.model_path} has no '{REWARD_LABEL}' label (labels: {sorted(id2label.values())})"
        )

    async def close(self) -> None:
        for engine in self._engines:
            await engine.close()
        self._engines = []
        if self._supervisor is not None:
            await anyio.to_thread.run_sync(self._supervisor.stop, self._settings.graceful_shutdown_s)
            self._supervisor = None
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
            self._metrics_dir = None
        if self._context is not None:
            self._context.term()
            self._context = None

    @property
    def supervisor(self) -> EngineSupervisor | None:
        """The engines this scorer started itself (None when it attached to engines started elsewhere)."""
        return self._supervisor

    @property
    def ready(self) -> bool:
        return self._state == "ready" and any(engine.ready for engine in self._engines)

    def info(self) -> ScorerInfo:
        statuses = [engine.status for engine in self._engines if engine.status is not None]
        state, error = self._state, self._error
        if state == "ready" and not self.ready:
            failed = [s.error for s in statuses if s.state == "failed"]
            state, error = (
                ("failed", failed[0]) if failed and len(failed) == len(self._engines) else ("loading", None)
            )
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

    def tokenize(self, texts: list[str], side: TruncationSide) -> Tokenized:
        """Token ids with special tokens, cut to the window on `side`; counts the cut ones.

        A long text is first cut to `CHARS_PER_TOKEN` characters per window token on the kept
        side, so that the tokenizer never materialises the (unbounded) cut-off remainder. The
        result is exact when at least `BOUNDARY_TOKENS` tokens still fall between that cut and the
        window (tokenization is local, so the window's tokens are those of the whole text);
        otherwise the text is tokenized whole.
        """
        limit = self.max_tokens * CHARS_PER_TOKEN
        cut = [
            text if len(text) <= limit else (text[-limit:] if side == "left" else text[:limit])
            for text in texts
        ]
        backend = self._truncating[side]
        ids, truncated, first_truncated = [], 0, None
        # In chunks: an Encoding (tokens, offsets, masks) weighs ~100 bytes a token; only the ids are
        # kept, so a chunk's encodings are freed before the next chunk is tokenized.
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = slice(start, start + TOKENIZE_CHUNK)
            encodings = backend.encode_batch_fast(cut[chunk], add_special_tokens=True)
            for text, short, encoding in zip(texts[chunk], cut[chunk], encodings, strict=True):
                was_cut = short is not text
                if was_cut and sum(len(o.ids) for o in encoding.overflowing) < BOUNDARY_TOKENS + 2:
                    encoding = backend.encode(text, add_special_tokens=True)
                ids.append(encoding.ids)
                if was_cut or encoding.overflowing:
                    truncated += 1
                    first_truncated = len(ids) - 1 if first_truncated is None else first_truncated
        return Tokenized(ids, truncated, first_truncated)

    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        engine = self._pick_engine()
        # 0: no deadline. Else at least a millisecond, so a deadline already past reads as one.
        left_s = options.deadline - time.monotonic()
        budget_s = max(1e-3, left_s) if math.isfinite(left_s) else 0.0
        estimate = sum(min(self.max_tokens, len(text) // CHARS_PER_TOKEN_GUESS + 2) for text in texts)
        self._admit(engine, estimate, budget_s)
        key = object()
        self._pending[key] = (estimate, options.deadline)
        try:
            return await self._score(engine, texts, options)
        finally:
            del self._pending[key]

    def _admit(self, engine: EngineClient, estimate: int, budget_s: float) -> None:
        """Refuse before tokenizing (503) a request that cannot finish before its deadline, given the
        work this front end has already taken on: tokenization and the engine's round trip both
        depend on it, and the engine checks again with the exact token count."""
        rate = self._rate(engine)
        if rate is None:
            return
        now = time.monotonic()
        queued = [
            Queued(tokens, deadline - now if math.isfinite(deadline) else None)
            for tokens, deadline in self._pending.values()
        ]
        why = refusal_reason(estimate, budget_s or None, queued, rate)
        if why is not None:
            raise Overloaded(
                f"scorer '{self.name}' cannot score this request before its deadline: {why}",
                self._settings.retry_after_s,
            )

    def _rate(self, engine: EngineClient) -> float | None:
        """Tokens per second through tokenization and the engine, once both were measured."""
        if engine.tokens_per_s is None or self._tokenize_tokens_per_s is None:
            return None
        return 1 / (1 / engine.tokens_per_s + 1 / self._tokenize_tokens_per_s)

    def _timed_tokenize(self, texts: list[str], side: TruncationSide) -> Tokenized:
        started = time.perf_counter()
        tokenized = self.tokenize(texts, side)
        tokens, seconds = sum(map(len, tokenized.ids)), time.perf_counter() - started
        if tokens >= MEASURED_TOKENIZE_TOKENS and seconds > 0:
            rate = tokens / seconds
            previous = self._tokenize_tokens_per_s
            self._tokenize_tokens_per_s = rate if previous is None else 0.8 * previous + 0.2 * rate
        return tokenized

    async def _score(self, engine: EngineClient, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        started = time.perf_counter()
        tokenized = await anyio.to_thread.run_sync(self._timed_tokenize, texts, options.truncation_side)
        if not options.truncate and tokenized.first_truncated is not None:
            raise InputTooLong(
                f"input {tokenized.first_truncated} is longer than the model's window of {self.max_tokens} "
                f"tokens ({tokenized.truncated} input(s) are); shorten it or allow truncation"
            )
        token_ids, lengths = pack_token_ids(tokenized.ids)
        tokenization_s = time.perf_counter() - started
        left_s = options.deadline - time.monotonic()
        result = await engine.score(token_ids, lengths, max(1e-3, left_s) if math.isfinite(left_s) else 0.0)
        record_engine_call(tokenization_s, result.queue_s, result.inference_s)
        logits = result.logits
        self._metrics.truncated.labels(self.name).inc(tokenized.truncated)
        scores = [row[self._reward_index] for row in logits]
        labels = self._label_scores(logits) if options.return_labels else None
        return ScoreOutput(
            scores=scores, truncated=tokenized.truncated, labels=labels, input_tokens=sum(lengths)
        )

    def _pick_engine(self) -> EngineClient:
        """The ready engine with the fewest items outstanding from this front end.

        If none has reported ready to this process yet, a connected one still gets the request: the
        engine knows best (it answers 503 itself while loading), and a front-end worker that started
        a moment after its siblings does not refuse work that its engine can already do.
        """
        ready = [engine for engine in self._engines if engine.ready]
        ready = ready or [engine for engine in self._engines if engine.connected]
        if not ready:
            info = self.info()
            raise NotReady(
                f"scorer '{self.name}' is not ready: {info.error or info.state}", self._settings.retry_after_s
            )
        return min(ready, key=lambda engine: engine.outstanding_items)

    def _label_scores(self, logits: list[list[float]]) -> list[dict[str, LabelScore]]:
        labels = []
        for row in logits:
            top = max(row)
            exps = [math.exp(x - top) for x in row]
            total = sum(exps)
            labels.append(
                {
                    name: LabelScore(logit=row[i], probability=exps[i] / total)
                    for i, name in enumerate(self.label_names)
                }
            )
        return labels
