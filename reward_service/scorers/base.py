"""The interface every scorer backend implements."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

from shared.schemas import LabelScore, ScorerInfo, TruncationSide


@dataclass(frozen=True)
class ScoreOptions:
    truncation_side: TruncationSide
    return_labels: bool = False
    # False: an input longer than the model's window is refused (InputTooLong) instead of cut.
    truncate: bool = True
    # time.monotonic() by which the answer is due; scorers stop retrying upstream calls past it.
    deadline: float = math.inf


@dataclass(frozen=True)
class EngineCall:
    """Where one call to a scoring engine spent its time (seconds), for the response's timing headers."""

    tokenization_s: float
    queue_s: float
    inference_s: float


@dataclass
class ScoreOutput:
    scores: list[float]
    truncated: int = 0
    labels: list[dict[str, LabelScore]] | None = None
    members: dict[str, list[float]] | None = None
    # Tokens the model read (after truncation), where the scorer tokenizes itself.
    input_tokens: int | None = None
    # The scoring-engine calls behind these scores (none for a judge).
    engine_calls: list[EngineCall] = field(default_factory=list)


class Scorer(ABC):
    """Turns texts into rewards (higher = better). Loaded once, shared by every request."""

    name: str
    kind: str
    # True for a classifier whose `labels` carry a logit per class; False where a score is one number.
    class_logits: bool = False

    @abstractmethod
    async def start(self) -> None:
        """Load weights / open clients. Errors are reported through `info().error`, not raised."""

    @abstractmethod
    async def close(self) -> None:
        """Release what `start` took."""

    @property
    @abstractmethod
    def ready(self) -> bool: ...

    @abstractmethod
    def info(self) -> ScorerInfo: ...

    @abstractmethod
    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        """One score per text, in order; raises instead of returning a partial result."""

    def reserve_unread(self, body_bytes: int, deadline: float) -> AbstractContextManager[None]:
        """Before a request's body is read: raise `Overloaded` if a body of `body_bytes` cannot be
        scored by `deadline` (`time.monotonic()`) given the work taken on, else count it as pending
        while the context is held (the body being read and decoded). Scorers without admission by
        work take every request here."""
        return nullcontext()
