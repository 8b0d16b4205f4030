"""GRPO and RLOO (`--algorithm grpo|rloo`): TRL's GRPOTrainer / RLOOTrainer, rewards from the service.

Both sample several completions per prompt and need no value model. They take reward functions
natively, so no patching is needed (unlike PPO, see reward_bridge.py): one `RemoteReward` per
scorer of `--reward_scorer`, in its async form so that TRL calls them concurrently (a slow judge
does not hold up the classifier), weighted by `--reward_weights`, plus `ResponseShape`, which
charges `--empty_response_penalty` for empty answers and logs response length and empty share.
Checkpoints and `--resume` are the transformers Trainer's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from transformers import PreTrainedTokenizerBase, Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import GRPOConfig, GRPOTrainer, ModelConfig, RLOOConfig, RLOOTrainer, get_peft_config

from shared.client import RewardClient
from shared.reward_function import PromptOrCompletion, RemoteReward, as_text
from trainer.checkpoints import saving
from trainer.config import RLAIFArguments
from trainer.progress import use_step_lines
from trainer.responses import is_empty, response_figures
from trainer.run_dir import last_checkpoint
from trainer.step_rng import StepEndRandomStates, restore_last_step_end
from trainer.tensorboard import continue_tensorboard
from trainer.train import ResumePoint, load_policy, load_tokenizer, reward_retry, splits_for

PENALTY_NAME = "empty_response_penalty"


class ResponseShape:
    """A reward function: -penalty for an empty completion, 0 otherwise. It also logs the mean
    length in tokens (before EOS) and the share of empty completions: a reward that rises while
    answers vanish is reward hacking, not learning."""

    __name__ = PENALTY_NAME

    def __init__(self, penalty: float, eos_token_id: int | None) -> None:
        self.penalty = penalty
        self.eos_token_id = eos_token_id

    def __call__(
        self,
        prompts: Sequence[PromptOrCompletion],
        completions: Sequence[PromptOrCompletion],
        completion_ids: Sequence[Sequence[int]] | None = None,
        log_metric: Any = None,
        **kwargs: Any,
    ) -> list[float]:
        texts = [as_text(c) for c in completions]
        if log_metric is not None and completions:
            lengths = [
                len(ids) - (1 if ids and ids[-1] == self.eos_token_id else 0) for ids in completion_ids or []
            ]
            shape = response_figures(texts, lengths)
            if shape["mean_tokens"] is not None:
                log_metric("response/mean_tokens", shape["mean_tokens"])
            log_metric("response/empty_share", shape["empty_share"])
        return [-self.penalty if is_empty(text) else 0.0 for text in texts]


class _ServiceRewardInLogs(Trainer):
    """Adds `reward/mean` to each log line: TRL's total reward less the empty-answer penalty, that
    is the weighted service scores, the figure PPO's bridge logs under the same name.

    It sits after TRL's trainer in the method order (see the trainers below), so its `log`
    receives the line that TRL's `log` has just averaged, through the public `log` signature,
    without reading TRL's private `_metrics`."""

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        total, penalty = logs.get("reward"), logs.get(f"rewards/{PENALTY_NAME}/mean")
        if total is not None and penalty is not None:
            logs["reward/mean"] = total - penalty
        super().log(logs, start_time)


class _RemoteRewardParts:
    """Reward clients, checkpoints whole or absent, and a save on demand (for a service outage)."""

    remote_rewards: list[RemoteReward]
    checkpoints_hold_value_model = False  # no critic

    def close_reward_clients(self) -> None:
        for reward in self.remote_rewards:
            reward.close()

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        step = self.state.global_step  # type: ignore[attr-defined]
        with saving(Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"):  # type: ignore[attr-defined]
            super()._save_checkpoint(model, trial)  # type: ignore[misc]

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with saving(Path(output_dir or self.args.output_dir)):  # type: ignore[attr-defined]
            super().save_model(output_dir, _internal_call)  # type: ignore[misc]

    def save_checkpoint_now(self) -> Path:
        """Save a checkpoint of the current step (weights, optimizer, scheduler, state), with the RNG
        states of the last whole step (trainer/step_rng.py)."""
        restore_last_step_end(self)
        self._save_checkpoint(self.model, trial=None)  # type: ignore[attr-defined]
        step = self.state.global_step  # type: ignore[attr-defined]
        return Path(self.args.output_dir) / f"checkpoint-{step}"  # type: ignore[attr-defined]


class RemoteRewardGRPOTrainer(_RemoteRewardParts, GRPOTrainer, _ServiceRewardInLogs):
    pass


class RemoteRewardRLOOTrainer(_RemoteRewardParts, RLOOTrainer, _ServiceRewardInLogs):
    pass


TRAINERS = {"grpo": RemoteRewardGRPOTrainer, "rloo": RemoteRewardRLOOTrainer}


def default_scorer(args: RLAIFArguments) -> str:
    """The service's default scorer's name: metrics are logged under it (rewards/<name>/mean), as
    for a scorer named by --reward_scorer."""
    with RewardClient(args.reward_url, api_key=args.api_key(), retry=reward_retry(args)) as client:
        return client.scorers().default


def remote_rewards(args: RLAIFArguments) -> list[RemoteReward]:
    return [
        RemoteReward(
            args.reward_url,
            scorer=scorer,
            score_on=args.score_on,
            api_key=args.api_key(),
            timeout_s=args.reward_timeout_s,
            retry=reward_retry(args),
            name=scorer or default_scorer(args),
        )
        for scorer in args.reward_scorers()
    ]


def prompt_dataset(split: Dataset, tokenizer: PreTrainedTokenizerBase) -> Dataset:
    """TRL's prompt column: the conversation (TRL applies the chat template itself) when the
    tokenizer has a template, else the prompt text."""
    if tokenizer.chat_template:
        return split.select_columns(["messages"]).rename_column("messages", "prompt")
    return split.select_columns(["prompt"])


def build_group_trainer(
    script_args: RLAIFArguments, config: GRPOConfig | RLOOConfig, model_config: ModelConfig
) -> tuple[RemoteRewardGRPOTrainer | RemoteRewardRLOOTrainer, DatasetDict, Path | None]:
    """Everything up to `train()` for GRPO or RLOO, and the checkpoint to resume from (with
    --resume: the newest complete one), which `train(resume_from_checkpoint=...)` restores."""
    base = model_config.model_name_or_path
    assert base, "model_name_or_path is required"
    tokenizer = load_tokenizer(base, model_config)
    splits = splits_for(script_args, tokenizer, config.seed)  # before the model: needs only the tokenizer
    policy = load_policy(base, tokenizer, model_config)
    train_set = splits["train"]
    if script_args.max_train_samples is not None:
        train_set = train_set.select(range(min(script_args.max_train_samples, len(train_set))))

    rewards = remote_rewards(script_args)
    shape = ResponseShape(script_args.empty_response_penalty, tokenizer.eos_token_id)
    weights = list(config.reward_weights or [1.0] * len(rewards))
    config.reward_weights = [*weights, 1.0]  # the penalty is never weighted
    trainer = TRAINERS[script_args.algorithm](
        model=policy,
        reward_funcs=[*(reward.as_async() for reward in rewards), shape],
        args=config,
        train_dataset=prompt_dataset(train_set, tokenizer),
        processing_class=tokenizer,
        peft_config=get_peft_config(model_config),
        callbacks=[StepEndRandomStates()],
    )
    trainer.remote_rewards = rewards
    use_step_lines(trainer)
    resume_from = last_checkpoint(config.output_dir) if script_args.resume else None
    if resume_from is not None:
        continue_tensorboard(trainer, ResumePoint.read(resume_from).global_step)
    return trainer, splits, resume_from
