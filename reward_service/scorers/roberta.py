"""RobertaScorer: a sequence classifier whose reward is the raw logit of its `nothate` label.

Data path: texts -> token ids (request thread, truncated to the window) -> MicroBatcher ->
`_forward` (worker thread, padded batch on the device) -> logits per item -> scores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import anyio
import torch
from tokenizers import Tokenizer
from transformers import AutoModelForSequenceClassification, AutoTokenizer, PreTrainedTokenizerBase

from reward_service.batcher import BatchLimits, MicroBatcher
from reward_service.errors import NotReady
from reward_service.metrics import ServiceMetrics
from reward_service.scorers.base import ScoreOptions, ScoreOutput, Scorer
from shared.schemas import LabelScore, ScorerInfo, TruncationSide

log = logging.getLogger(__name__)

REWARD_LABEL = "nothate"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"REWARD_DEVICE={device} but CUDA is not available")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


@dataclass
class _Tokenized:
    ids: list[list[int]]
    truncated: int


class RobertaScorer(Scorer):
    kind = "classifier"

    def __init__(
        self,
        name: str,
        model_path: str,
        device: str,
        dtype: str,
        limits: BatchLimits,
        metrics: ServiceMetrics,
    ) -> None:
        self.name = name
        self.model_path = model_path
        self._device_setting = device
        self._dtype_setting = dtype
        self._limits = limits
        self._metrics = metrics
        self._device: torch.device | None = None
        self._dtype: torch.dtype | None = None
        self._model: torch.nn.Module | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._truncating: dict[str, Tokenizer] = {}
        self._batcher: MicroBatcher[list[int], list[float]] | None = None
        self._state: Literal["loading", "ready", "failed"] = "loading"
        self._error: str | None = None
        self.max_tokens: int = 512
        self.label_names: list[str] = []
        self._reward_index = 0

    async def start(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._load)
        except Exception as exc:  # noqa: BLE001 - reported by /readyz and /scorers
            log.exception("could not load scorer %s from %s", self.name, self.model_path)
            self._error = f"failed to load {self.model_path}: {type(exc).__name__}: {exc}"
            self._state = "failed"
            return
        self._batcher = MicroBatcher(self.name, self._forward, len, self._limits, self._metrics)
        self._batcher.start()
        self._state = "ready"
        log.info("scorer %s ready: %s on %s (%s)", self.name, self.model_path, self._device, self._dtype)

    def _load(self) -> None:
        self._device = resolve_device(self._device_setting)
        self._dtype = resolve_dtype(self._dtype_setting, self._device)
        tokenizer = AutoTokenizer.from_pretrained(self.model_path)
        model = AutoModelForSequenceClassification.from_pretrained(self.model_path, dtype=self._dtype)
        model.to(self._device).eval()
        id2label = {int(i): str(label) for i, label in model.config.id2label.items()}
        self.label_names = [id2label[i] for i in sorted(id2label)]
        self._reward_index = self._find_reward_index(id2label)
        # RoBERTa's position table has two slots reserved for the padding offset.
        window = model.config.max_position_embeddings
        if model.config.model_type in {"roberta", "xlm-roberta"}:
            window -= 2
        self.max_tokens = min(window, tokenizer.model_max_length)
        self._tokenizer = tokenizer
        # One backend tokenizer per truncation side, each configured once: the backend's truncation
        # setting is shared state, and tokenization runs on several threads at once.
        self._truncating = {side: self._backend(tokenizer, side) for side in ("left", "right")}
        self._model = model

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
        if self._batcher is not None:
            await self._batcher.stop()
            self._batcher = None

    @property
    def ready(self) -> bool:
        return self._state == "ready"

    def info(self) -> ScorerInfo:
        return ScorerInfo(
            name=self.name,
            kind=self.kind,
            model=self.model_path,
            device=str(self._device) if self._device else None,
            dtype=str(self._dtype).removeprefix("torch.") if self._dtype else None,
            state=self._state,
            error=self._error,
            labels=self.label_names or None,
            max_tokens=self.max_tokens,
        )

    def tokenize(self, texts: list[str], side: TruncationSide) -> _Tokenized:
        """Token ids with special tokens, cut to the window on `side`; counts the cut ones."""
        encodings = self._truncating[side].encode_batch(texts, add_special_tokens=True)
        return _Tokenized([e.ids for e in encodings], sum(1 for e in encodings if e.overflowing))

    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        if self._batcher is None or not self.ready:
            raise NotReady(
                f"scorer '{self.name}' is not ready: {self._error or self._state}", self._limits.retry_after_s
            )
        tokenized = await anyio.to_thread.run_sync(self.tokenize, texts, options.truncation_side)
        logits = await self._batcher.submit(tokenized.ids)
        self._metrics.truncated.labels(self.name).inc(tokenized.truncated)
        scores = [row[self._reward_index] for row in logits]
        labels = self._label_scores(logits) if options.return_labels else None
        return ScoreOutput(scores=scores, truncated=tokenized.truncated, labels=labels)

    def _label_scores(self, logits: list[list[float]]) -> list[dict[str, LabelScore]]:
        probabilities = torch.tensor(logits, dtype=torch.float64).softmax(dim=-1).tolist()
        return [
            {name: LabelScore(logit=row[i], probability=probs[i]) for i, name in enumerate(self.label_names)}
            for row, probs in zip(logits, probabilities, strict=True)
        ]

    @torch.inference_mode()
    def _forward(self, batch: list[list[int]]) -> list[list[float]]:
        """Logits per item for one padded batch; halves the batch on CUDA out-of-memory."""
        assert self._model is not None and self._tokenizer is not None
        try:
            padded = self._tokenizer.pad({"input_ids": batch}, return_tensors="pt")
            logits = self._model(
                input_ids=padded["input_ids"].to(self._device),
                attention_mask=padded["attention_mask"].to(self._device),
            ).logits
            return logits.float().cpu().tolist()
        except torch.cuda.OutOfMemoryError:
            if len(batch) == 1:
                raise
            self._metrics.oom_splits.labels(self.name).inc()
            torch.cuda.empty_cache()
            half = len(batch) // 2
            log.warning(
                "CUDA out of memory on %d items; retrying as %d + %d", len(batch), half, len(batch) - half
            )
            return self._forward(batch[:half]) + self._forward(batch[half:])
