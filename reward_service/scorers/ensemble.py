"""EnsembleScorer: a weighted sum of other scorers, whose scores it also returns.

The reference pipeline suggests combining several reward models; weights are used as given, so make
them sum to 1 for a weighted average. Members are scored concurrently; if one fails, the request fails
with that member's error and the others are cancelled: no partial sum is ever returned.
"""

from __future__ import annotations

import asyncio

from reward_service.scorers.base import ScoreOptions, ScoreOutput, Scorer
from shared.schemas import ScorerInfo


class EnsembleScorer(Scorer):
    kind = "ensemble"

    def __init__(self, name: str, members: dict[str, tuple[Scorer, float]]) -> None:
        if not members:
            raise ValueError(f"ensemble '{name}' has no members")
        self.name = name
        self.members = members

    @property
    def description(self) -> str:
        return " + ".join(f"{weight:g}*{name}" for name, (_, weight) in self.members.items())

    async def start(self) -> None:
        """Nothing of its own: the registry starts the members."""

    async def close(self) -> None:
        """Nothing of its own: the registry closes the members."""

    @property
    def ready(self) -> bool:
        return all(scorer.ready for scorer, _ in self.members.values())

    def info(self) -> ScorerInfo:
        infos = {name: scorer.info() for name, (scorer, _) in self.members.items()}
        failed = [
            f"{name}: {info.error or 'failed'}" for name, info in infos.items() if info.state == "failed"
        ]
        if failed:
            state, error = "failed", "member scorer(s) failed: " + "; ".join(failed)
        elif all(info.state == "ready" for info in infos.values()):
            state, error = "ready", None
        else:
            state, error = "loading", None
        return ScorerInfo(name=self.name, kind=self.kind, model=self.description, state=state, error=error)

    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        tasks = {
            name: asyncio.create_task(scorer.score(texts, options))
            for name, (scorer, _) in self.members.items()
        }
        try:
            done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
        finally:
            # On a member's error (or our own cancellation) the others' work is no longer wanted.
            for task in tasks.values():
                if not task.done():
                    task.cancel()
        errors = [error for task in done if (error := task.exception()) is not None]
        if errors:
            raise errors[0]
        outputs = {name: task.result() for name, task in tasks.items()}
        scores = [0.0] * len(texts)
        for name, output in outputs.items():
            weight = self.members[name][1]
            scores = [total + weight * score for total, score in zip(scores, output.scores, strict=True)]
        return ScoreOutput(
            scores=scores,
            truncated=max(output.truncated for output in outputs.values()),
            members={name: output.scores for name, output in outputs.items()},
            engine_calls=[call for output in outputs.values() for call in output.engine_calls],
        )
