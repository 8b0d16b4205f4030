"""Rewards shuffled across completions: the control that tells learning from drift.

Inside `shuffled_scores()`, every answer a reward client of this process reads (`shared.client`,
sync and async, so PPO's bridge, GRPO/RLOO's `RemoteReward` and the evaluation alike) has its
scores permuted among the texts of that request. Each request's mean is unchanged, so the
held-out means stay exact; only the link between a completion and its own reward is cut. A
learning test whose run still rises under it would be measuring something else (the entropy
falling, answers getting shorter) rather than the reward.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import shared.client
from shared.schemas import ScoreResponse


@contextmanager
def shuffled_scores(seed: int = 0) -> Iterator[None]:
    rng = random.Random(seed)
    parse_chunk = shared.client._parse_chunk

    def shuffled(body: Any, payload: dict[str, Any], url: str) -> ScoreResponse:
        response = parse_chunk(body, payload, url)
        order = list(range(len(response.scores)))
        rng.shuffle(order)
        labels = None if response.labels is None else [response.labels[i] for i in order]
        members = None
        if response.members is not None:
            members = {name: [scores[i] for i in order] for name, scores in response.members.items()}
        scores = [response.scores[i] for i in order]
        return response.model_copy(update={"scores": scores, "labels": labels, "members": members})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shared.client, "_parse_chunk", shuffled)
        yield
