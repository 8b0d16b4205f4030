"""Scorer backends and the registry that builds them from settings."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from reward_service.engine.pool import EnginePool
from reward_service.errors import UnknownScorer
from reward_service.metrics import ServiceMetrics
from reward_service.scorers.base import ScoreOptions, ScoreOutput, Scorer
from reward_service.scorers.ensemble import EnsembleScorer
from reward_service.settings import ServiceSettings
from shared.schemas import ScorerInfo

__all__ = ["ScoreOptions", "ScoreOutput", "Scorer", "ScorerRegistry", "build_registry", "SCORER_FACTORIES"]


def _roberta_hate(
    name: str, settings: ServiceSettings, metrics: ServiceMetrics, engines: EnginePool
) -> Scorer:
    from reward_service.scorers.roberta import RobertaScorer

    return RobertaScorer(name, settings, metrics, engines.group(name))


def _claude_bedrock(
    name: str, settings: ServiceSettings, metrics: ServiceMetrics, engines: EnginePool
) -> Scorer:
    from reward_service.scorers.bedrock import BedrockJudge

    return BedrockJudge(name, settings, metrics)


ScorerFactory = Callable[[str, ServiceSettings, ServiceMetrics, EnginePool], Scorer]
# One per name in settings.SCORER_BACKENDS, which the settings check REWARD_SCORERS against.
SCORER_FACTORIES: dict[str, ScorerFactory] = {
    "roberta-hate": _roberta_hate,
    "claude-bedrock": _claude_bedrock,
}


class ScorerRegistry:
    """The loaded scorers, by name; the first configured one is the default. `engines`, when given,
    is the pool whose engines the scorers use: started before them, closed after them."""

    def __init__(self, scorers: dict[str, Scorer], default: str, engines: EnginePool | None = None) -> None:
        self.scorers = scorers
        self.default = default
        self.engines = engines

    def get(self, name: str | None) -> Scorer:
        key = self.default if name is None else name
        try:
            return self.scorers[key]
        except KeyError:
            raise UnknownScorer(f"unknown scorer '{key}'; known scorers: {', '.join(self.scorers)}") from None

    def infos(self) -> list[ScorerInfo]:
        return [scorer.info() for scorer in self.scorers.values()]

    async def start(self) -> None:
        if self.engines is not None:
            await self.engines.start()
        await asyncio.gather(*(scorer.start() for scorer in self.scorers.values()))

    async def close(self) -> None:
        await asyncio.gather(*(scorer.close() for scorer in self.scorers.values()))
        if self.engines is not None:
            await self.engines.close()


def build_registry(settings: ServiceSettings, metrics: ServiceMetrics) -> ScorerRegistry:
    """The scorers of REWARD_SCORERS, then the ensembles of REWARD_ENSEMBLES not listed there, with
    the engine pool that the model scorers among them share. The settings have checked that each
    name is a backend of SCORER_FACTORIES or an ensemble of loaded backends."""
    engines = EnginePool(settings, metrics)
    loaded = {
        name: SCORER_FACTORIES[name](name, settings, metrics, engines)
        for name in settings.scorers
        if name in SCORER_FACTORIES
    }
    combined: dict[str, Scorer] = {
        name: EnsembleScorer(name, {member: (loaded[member], w) for member, w in weights.items()})
        for name, weights in settings.ensembles.items()
    }
    scorers = {name: loaded.get(name) or combined[name] for name in settings.scorers}
    scorers.update({name: scorer for name, scorer in combined.items() if name not in scorers})
    return ScorerRegistry(scorers, settings.default_scorer, engines)
