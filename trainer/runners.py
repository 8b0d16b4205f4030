"""One runner per algorithm behind one interface: what `rlaif-train` needs to know of PPO, GRPO
and RLOO (build the trainer, find the policy it trained), so the command does not ask which
algorithm it holds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from datasets import DatasetDict
from transformers import PreTrainedModel
from trl import ModelConfig

from trainer.config import RLAIFArguments, TrainingConfig
from trainer.group_train import build_group_trainer
from trainer.train import build_trainer


class Runner(Protocol):
    def build(
        self, script_args: RLAIFArguments, config: TrainingConfig, model_config: ModelConfig
    ) -> tuple[Any, DatasetDict, Path | None]:
        """The trainer, the data splits, and the checkpoint that `train()` resumes from (None when
        the trainer resumed itself while building, or starts fresh)."""
        ...

    def trained_policy(self, unwrapped: Any) -> PreTrainedModel:
        """The policy inside the trainer's (unwrapped) model."""
        ...


@dataclass(frozen=True)
class PPORunner:
    def build(
        self, script_args: RLAIFArguments, config: TrainingConfig, model_config: ModelConfig
    ) -> tuple[Any, DatasetDict, Path | None]:
        trainer, _, splits = build_trainer(script_args, config, model_config)  # type: ignore[arg-type]
        return trainer, splits, None  # build_trainer restored the checkpoint already

    def trained_policy(self, unwrapped: Any) -> PreTrainedModel:
        return unwrapped.policy  # PPO trains a policy + value wrapper


@dataclass(frozen=True)
class GroupRunner:
    """GRPO and RLOO: TRL's trainers take the reward functions and resume natively."""

    def build(
        self, script_args: RLAIFArguments, config: TrainingConfig, model_config: ModelConfig
    ) -> tuple[Any, DatasetDict, Path | None]:
        return build_group_trainer(script_args, config, model_config)  # type: ignore[arg-type]

    def trained_policy(self, unwrapped: Any) -> PreTrainedModel:
        return unwrapped


RUNNERS: dict[str, Runner] = {"ppo": PPORunner(), "grpo": GroupRunner(), "rloo": GroupRunner()}
