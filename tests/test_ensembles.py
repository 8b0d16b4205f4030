"""REWARD_ENSEMBLES parsing, registry building, and EnsembleScorer with stand-in member scorers."""

from __future__ import annotations

import asyncio
import time

import pytest
from pydantic import ValidationError

from reward_service.errors import UpstreamFailed
from reward_service.metrics import ServiceMetrics
from reward_service.scorers import ScoreOptions, ScoreOutput, Scorer, build_registry
from reward_service.scorers.ensemble import EnsembleScorer
from reward_service.settings import ServiceSettings, parse_ensembles
from shared.schemas import ScorerInfo

OPTIONS = ScoreOptions(truncation_side="left")


class StandIn(Scorer):
    """Scores each text by its length x `factor`, after `delay_s`; or fails with `error`."""

    kind = "stand-in"

    def __init__(
        self, name: str, factor: float, delay_s: float = 0.0, error: Exception | None = None
    ) -> None:
        self.name, self.factor, self.delay_s, self.error = name, factor, delay_s, error
        self.finished = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    @property
    def ready(self) -> bool:
        return True

    def info(self) -> ScorerInfo:
        return ScorerInfo(name=self.name, kind=self.kind, model="stand-in", state="ready")

    async def score(self, texts: list[str], options: ScoreOptions) -> ScoreOutput:
        await asyncio.sleep(self.delay_s)
        if self.error is not None:
            raise self.error
        self.finished = True
        return ScoreOutput(
            scores=[len(t) * self.factor for t in texts], truncated=1 if self.factor > 1 else 0
        )


def settings(**values: object) -> ServiceSettings:
    return ServiceSettings(_env_file=None, **values)


def test_ensembles_parse_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARD_SCORERS", "roberta-hate,claude-bedrock")
    monkeypatch.setenv(
        "REWARD_ENSEMBLES", "safety=roberta-hate:0.5, claude-bedrock:0.5 ; judge=claude-bedrock:2"
    )
    assert settings().ensembles == {
        "safety": {"roberta-hate": 0.5, "claude-bedrock": 0.5},
        "judge": {"claude-bedrock": 2.0},
    }
    assert parse_ensembles("") == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("safety", "is not 'name=scorer:weight,...'"),
        ("safety=roberta-hate", "is not 'scorer:weight'"),
        ("safety=roberta-hate:half", "'half' is not a number"),
        ("safety=roberta-hate:nan", "must be finite"),
        ("safety=roberta-hate:1,roberta-hate:2", "lists 'roberta-hate' twice"),
        ("a=roberta-hate:1;a=roberta-hate:2", "defines 'a' twice"),
    ],
)
def test_bad_ensemble_specs_are_refused_with_the_reason(spec: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(ensembles=spec)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scorers": ["roberta-hate"], "ensembles": "safety=roberta-hate:0.5,claude-bedrock:0.5"},
         r"uses \['claude-bedrock'\], which REWARD_SCORERS does not load"),
        ({"scorers": ["roberta-hate"], "ensembles": "roberta-hate=roberta-hate:1"}, "reuses scorer name"),
        ({"scorers": ["safety", "roberta-hate"]}, r"unknown scorer\(s\) \['safety'\]"),
        ({"scorers": ["roberta-hate"], "ensembles": "a=roberta-hate:1;b=a:1"}, r"uses \['a'\]"),
    ],
)  # fmt: skip
def test_settings_refuse_ensembles_the_registry_cannot_build(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**values)


def test_an_ensemble_can_be_the_default_and_is_listed_with_the_scorers() -> None:
    registry = build_registry(
        settings(
            scorers=["safety", "roberta-hate", "claude-bedrock"],
            ensembles="safety=roberta-hate:0.5,claude-bedrock:0.5;judge-only=claude-bedrock:1",
        ),
        ServiceMetrics(),
    )
    assert list(registry.scorers) == ["safety", "roberta-hate", "claude-bedrock", "judge-only"]
    default = registry.get(None)
    assert isinstance(default, EnsembleScorer) and default.name == "safety"
    assert default.info().model == "0.5*roberta-hate + 0.5*claude-bedrock"


def test_weighted_sum_of_members_run_concurrently() -> None:
    a, b = StandIn("a", 1.0, delay_s=0.3), StandIn("b", 10.0, delay_s=0.3)
    ensemble = EnsembleScorer("mix", {"a": (a, 0.25), "b": (b, -0.5)})
    started = time.perf_counter()
    output = asyncio.run(ensemble.score(["x", "xyz"], OPTIONS))
    assert time.perf_counter() - started < 0.55  # one after another would take 0.6 s
    assert output.members == {"a": [1.0, 3.0], "b": [10.0, 30.0]}
    assert output.scores == pytest.approx([0.25 * 1 - 0.5 * 10, 0.25 * 3 - 0.5 * 30])
    assert output.truncated == 1


def test_a_failing_member_fails_the_ensemble_and_cancels_the_others() -> None:
    slow = StandIn("slow", 1.0, delay_s=5.0)
    broken = StandIn("broken", 1.0, error=UpstreamFailed("judge down"))
    ensemble = EnsembleScorer("mix", {"slow": (slow, 0.5), "broken": (broken, 0.5)})
    started = time.perf_counter()
    with pytest.raises(UpstreamFailed, match="judge down"):
        asyncio.run(ensemble.score(["x"], OPTIONS))
    assert time.perf_counter() - started < 2 and not slow.finished
