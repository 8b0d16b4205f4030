"""The interface every scorer backend implements."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

from shared.schemas import LabelScore, ScorerInfo, TruncationSide


@dataclass(frozen=True)
class ScoreOptions:
    truncation_side: TruncationSide
    return_labels: bool = False
    # time.monotonic() by which the answer is due; scorers stop retrying upstream calls past it.
    deadline: float = math.inf


@dataclass
class ScoreOutput:
    scores: list[float]
    truncated: int = 0
    labels: list[dict[str, LabelScore]] | None = None
    members: dict[str, list[float]] | None = None


class Scorer(ABC):
    """Turns texts into rewards (higher = better). Loaded once, shared by every request."""

    name: str
    kind: str

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
