"""Wire schemas and HTTP clients for the RLAIF reward service (no torch needed)."""

from shared.client import AsyncRewardClient, RetryPolicy, RewardClient, parse_base_urls
from shared.errors import (
    RewardClientError,
    RewardRequestError,
    RewardResponseError,
    RewardScoringError,
    RewardServiceUnavailable,
)
from shared.reward_function import RemoteReward
from shared.schemas import (
    LabelScore,
    OpenRLHFRequest,
    OpenRLHFResponse,
    ScoreRequest,
    ScoreResponse,
    ScorerInfo,
    ScorersResponse,
)

__all__ = [
    "AsyncRewardClient",
    "LabelScore",
    "OpenRLHFRequest",
    "OpenRLHFResponse",
    "RemoteReward",
    "RetryPolicy",
    "RewardClient",
    "RewardClientError",
    "RewardRequestError",
    "RewardResponseError",
    "RewardScoringError",
    "RewardServiceUnavailable",
    "ScoreRequest",
    "ScoreResponse",
    "ScorerInfo",
    "ScorersResponse",
    "parse_base_urls",
]
