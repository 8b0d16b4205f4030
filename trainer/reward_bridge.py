"""The bridge between TRL 1.12's PPO loop and the reward service.

TRL's `PPOTrainer` has no hook for a remote reward: inside `train()` it calls the module-level
function `get_reward(model, query_responses, pad_token_id, context_length)` (imported from
`trl.experimental.utils` into `trl.experimental.ppo.ppo_trainer`) on its `reward_model` and keeps the
second element of the result, one score per row. So we hand TRL a `RemoteRewardModel` (an
`nn.Module` with no weights) as `reward_model`, and replace `get_reward` *in ppo_trainer's namespace*
by `_routed_get_reward`, which sends rows whose model is a `RemoteRewardModel` to the service and
every other call (the value model's, for instance) to TRL's own function, unchanged.

With DeepSpeed, TRL would also wrap the reward model in a DeepSpeed engine (`prepare_deepspeed`);
that makes no sense for a module without weights, so `prepare_deepspeed` is routed the same way.

`tests/test_trainer_bridge.py` checks the contract this relies on (names, signatures, the shape of
the result TRL uses) so that a TRL upgrade that changes it fails loudly there, not silently here.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from trl.experimental.utils import first_true_indices

from shared.client import RewardClient
from shared.schemas import ScoreOn
from trainer.responses import is_empty, response_figures

# Every name TRL's PPO loop must still expose for this bridge to work; checked by the bridge test.
TRL_VERSION = "1.12.0"
PATCHED_NAMES = ("get_reward", "prepare_deepspeed")


@dataclass
class RewardCallStats:
    """Scores and call latencies since the last `pop()`, for per-step logging."""

    scores: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    responses: list[str] = field(default_factory=list)
    response_tokens: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, scores: list[float], latency_s: float, responses: list[str], tokens: list[int]) -> None:
        with self._lock:
            self.scores.extend(scores)
            self.latencies_s.append(latency_s)
            self.responses.extend(responses)
            self.response_tokens.extend(tokens)

    def pop(self) -> dict[str, float]:
        """Summary of the calls since the last pop (empty dict if there were none).

        Response length and the share of empty answers sit beside the reward: a reward that rises
        while answers shrink to nothing is reward hacking, not learning.
        """
        with self._lock:
            scores, latencies, responses, tokens = (
                self.scores,
                self.latencies_s,
                self.responses,
                self.response_tokens,
            )
            self.scores, self.latencies_s, self.responses, self.response_tokens = [], [], [], []
        if not scores:
            return {}
        shape = response_figures(responses, tokens)
        return {
            "reward/mean": statistics.fmean(scores),
            "reward/std": statistics.pstdev(scores),
            "reward/call_latency_s": statistics.fmean(latencies),
            "reward/calls": float(len(latencies)),
            "response/mean_tokens": shape["mean_tokens"],
            "response/empty_share": shape["empty_share"],
        }


def response_token_counts(responses: torch.Tensor, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens of each response row before its EOS or padding."""
    stops = torch.zeros_like(responses, dtype=torch.bool)
    for token_id in {tokenizer.pad_token_id, tokenizer.eos_token_id} - {None}:
        stops |= responses == token_id
    return first_true_indices(stops).tolist()


class RemoteRewardModel(nn.Module):
    """Stands where TRL expects a reward model; its scores come from the reward service.

    It has no parameters: TRL moves it to a device and disables its dropout, both harmless.
    """

    def __init__(
        self,
        client: RewardClient,
        tokenizer: PreTrainedTokenizerBase,
        *,
        scorer: str | None = None,
        score_on: ScoreOn = "query_response",
        empty_response_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        self.client = client
        self.tokenizer = tokenizer
        self.scorer = scorer
        self.score_on = score_on
        self.empty_response_penalty = empty_response_penalty
        self.stats = RewardCallStats()

    def decode_rows(self, query_responses: torch.Tensor, context_length: int) -> tuple[list[str], list[str]]:
        """Split each row at `context_length` and decode both halves without pad or special tokens."""
        queries, responses = [], []
        pad_id = self.tokenizer.pad_token_id
        for row in query_responses.tolist():
            # Pad is dropped by id as well: some tokenizers do not list it among their special tokens.
            query = [t for t in row[:context_length] if t != pad_id]
            response = [t for t in row[context_length:] if t != pad_id]
            queries.append(self.tokenizer.decode(query, skip_special_tokens=True))
            responses.append(self.tokenizer.decode(response, skip_special_tokens=True))
        return queries, responses

    def score_rows(self, query_responses: torch.Tensor, context_length: int) -> torch.Tensor:
        """One service call for the whole chunk; float32 scores on the rows' device, in row order.

        The client raises `RewardServiceUnavailable` when it gives up: nothing is made up here.
        """
        queries, responses = self.decode_rows(query_responses, context_length)
        started = time.perf_counter()
        result = self.client.score(
            queries=queries, responses=responses, scorer=self.scorer, score_on=self.score_on
        )
        tokens = response_token_counts(query_responses[:, context_length:], self.tokenizer)
        self.stats.record(result.scores, time.perf_counter() - started, responses, tokens)
        # Shaping, visible in the config and in TRL's objective/scores: the service's scores
        # (reward/mean) are never altered, an empty answer just costs `empty_response_penalty`.
        shaped = [
            score - self.empty_response_penalty if is_empty(text) else score
            for score, text in zip(result.scores, responses, strict=True)
        ]
        return torch.tensor(shaped, dtype=torch.float32, device=query_responses.device)

    def forward(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("RemoteRewardModel is scored through the bridge, never called directly")


def remote_get_reward(
    model: RemoteRewardModel, query_responses: torch.Tensor, pad_token_id: int, context_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as TRL's `get_reward`: (per-token reward logits, final scores, sequence lengths).

    TRL's PPO loop only reads the final scores; the other two are filled in the same layout as
    TRL's function (the score sits at the last non-pad token) so that any caller stays consistent.
    """
    scores = model.score_rows(query_responses, context_length)
    sequence_lengths = (
        first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    )
    logits = torch.zeros(*query_responses.shape, 1, dtype=scores.dtype, device=scores.device)
    logits[torch.arange(len(scores), device=scores.device), sequence_lengths, 0] = scores
    return logits, scores, sequence_lengths


_installed = False


def install() -> None:
    """Route TRL's `get_reward` / `prepare_deepspeed` for `RemoteRewardModel` to the service. Idempotent."""
    global _installed
    if _installed:
        return
    from trl.experimental.ppo import ppo_trainer

    trl_get_reward = ppo_trainer.get_reward
    trl_prepare_deepspeed = ppo_trainer.prepare_deepspeed

    def routed_get_reward(
        model: nn.Module, query_responses: torch.Tensor, pad_token_id: int, context_length: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if isinstance(model, RemoteRewardModel):
            return remote_get_reward(model, query_responses, pad_token_id, context_length)
        return trl_get_reward(model, query_responses, pad_token_id, context_length)

    def routed_prepare_deepspeed(model: nn.Module, accelerator: Any) -> nn.Module:
        if isinstance(model, RemoteRewardModel):
            return model
        return trl_prepare_deepspeed(model, accelerator)

    ppo_trainer.get_reward = routed_get_reward
    ppo_trainer.prepare_deepspeed = routed_prepare_deepspeed
    _installed = True
