"""PPO training with TRL 1.12, rewards from the reward service.

Reads top to bottom like TRL's `examples/scripts/ppo/ppo.py`: model & tokenizer, dataset, reward
client, training, save, evaluation. What is ours: the reward bridge, per-step reward logging, the
value model in checkpoints, `--resume`, and stopping cleanly (checkpoint first) when the reward
service stays unreachable.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.data_loader import get_sampler
from datasets import DatasetDict
from torch.utils.data import RandomSampler
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    enable_full_determinism,
    set_seed,
)
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import ModelConfig, get_peft_config
from trl.experimental.ppo import PPOConfig, PPOTrainer

from shared.client import RetryPolicy, RewardClient
from shared.errors import RewardClientError, RewardServiceUnavailable
from trainer import reward_bridge
from trainer.checkpoints import VALUE_MODEL_DIR, DiskFull, remove_if_incomplete, saving
from trainer.config import RLAIFArguments
from trainer.data import build_splits
from trainer.progress import use_step_lines
from trainer.run_dir import last_checkpoint, mark_finished
from trainer.step_rng import StepEndRandomStates, restore_last_step_end
from trainer.tensorboard import continue_tensorboard
from trainer.waiting import WaitingRetryPolicy

logger = logging.getLogger(__name__)

TRAIN_LOG = "train_log.json"


class TrainingInterrupted(RuntimeError):
    """Training stopped early on a reward-service failure; a checkpoint was saved first if a step was
    trained (`checkpoint`, else None)."""

    def __init__(self, message: str, checkpoint: Path | None) -> None:
        self.checkpoint = checkpoint
        super().__init__(message)


class DiskFullStop(TrainingInterrupted):
    """Training stopped because a save ran out of disk space; `checkpoint` is the last whole one."""


# Model & Tokenizer -----------------------------------------------------------------------------


def load_tokenizer(name_or_path: str, model_config: ModelConfig) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        name_or_path,
        revision=model_config.model_revision,
        trust_remote_code=getattr(model_config, "trust_remote_code", False),
        padding_side="left",  # PPO generates after the prompt
    )
    if tokenizer.pad_token is None:
        # TRL's PPO marks "no token here" with pad; eos must stay distinguishable, so add a pad token.
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
    return tokenizer


def seed_before_loading(args: PPOConfig) -> None:
    """Seed as transformers' Trainer.__init__ does (TRL's PPOTrainer skips it): the value model's
    score head is new, drawn from the global RNG, so unseeded it differed on every run."""
    if args.full_determinism:  # also deterministic kernels (slower; mostly matters on GPUs)
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def _model_kwargs(model_config: ModelConfig) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "revision": model_config.model_revision,
        "trust_remote_code": getattr(model_config, "trust_remote_code", False),
        "attn_implementation": model_config.attn_implementation,
    }
    if model_config.dtype not in (None, "auto"):
        kwargs["dtype"] = getattr(torch, model_config.dtype)
    elif model_config.dtype == "auto":
        kwargs["dtype"] = "auto"
    return {k: v for k, v in kwargs.items() if v is not None}


def _fit_vocab(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_policy(
    path: str, tokenizer: PreTrainedTokenizerBase, model_config: ModelConfig, adapter: str | None = None
) -> PreTrainedModel:
    """The causal policy; with `adapter`, the base at `path` plus a trainable LoRA adapter from there."""
    model = _fit_vocab(AutoModelForCausalLM.from_pretrained(path, **_model_kwargs(model_config)), tokenizer)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    return model


def load_value_model(
    path: str, tokenizer: PreTrainedTokenizerBase, model_config: ModelConfig
) -> PreTrainedModel:
    """The critic: the same (or a smaller, same-tokenizer) backbone with a one-output head."""
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=1, **_model_kwargs(model_config)
    )
    return _fit_vocab(model, tokenizer)


def splits_for(script_args: RLAIFArguments, tokenizer: PreTrainedTokenizerBase, seed: int) -> DatasetDict:
    """The train/test splits the arguments describe; training and `rlaif-eval` must agree on them."""
    return build_splits(
        script_args.dataset_name or "Anthropic/hh-rlhf",
        tokenizer,
        split=script_args.dataset_train_split,
        config=script_args.dataset_config,
        min_chars=script_args.min_dialogue_chars,
        max_chars=script_args.max_dialogue_chars,
        max_prompt_tokens=script_args.max_prompt_tokens,
        test_size=script_args.test_size,
        seed=seed,
    )


def reward_retry(args: RLAIFArguments) -> RetryPolicy:
    """Retry for --reward_max_wait_s in all (capped at --reward_max_attempts only when given)."""
    policy = WaitingRetryPolicy(max_total_s=args.reward_max_wait_s)
    if args.reward_max_attempts is not None:
        policy.max_attempts = args.reward_max_attempts
    return policy


def reward_client(args: RLAIFArguments) -> RewardClient:
    return RewardClient(
        args.reward_url, api_key=args.api_key(), timeout_s=args.reward_timeout_s, retry=reward_retry(args)
    )


# Checkpoints -----------------------------------------------------------------------------------


@dataclass
class ResumePoint:
    checkpoint: Path
    global_step: int
    episode: int
    log_history: list[dict[str, Any]]

    @classmethod
    def read(cls, checkpoint: Path) -> ResumePoint:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return cls(checkpoint, state["global_step"], state.get("episode", 0), state.get("log_history", []))


class ResumeCounters(TrainerCallback):
    """TRL's `train()` restarts its counters at 0; put the resumed step, episode and history back,
    and the RNG states saved with the checkpoint (the rollouts' sampling draws from them)."""

    def __init__(self, point: ResumePoint, max_steps: int, trainer: PPOTrainer) -> None:
        self.point = point
        self.max_steps = max_steps
        self.trainer = trainer

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        state.global_step = self.point.global_step
        # Derived, not read: a checkpoint saved when the service failed mid-step holds the episode
        # count of the step that never finished.
        state.episode = self.point.global_step * args.batch_size
        state.max_steps = self.max_steps
        state.log_history = list(self.point.log_history)
        # The last thing before the loop, as the uninterrupted run had them after the saved step.
        self.trainer._load_rng_state(str(self.point.checkpoint))


def own_data_order(trainer: PPOTrainer, seed: int) -> None:
    """Give the prompt sampler its own seeded generator. Left without one (one process), each
    epoch's shuffle draws from the global RNG, which the rollouts' sampling moves: the order could
    then not be replayed on resume. (Several processes: accelerate already gives it one.)"""
    sampler = get_sampler(trainer.dataloader)
    if isinstance(sampler, RandomSampler) and sampler.generator is None:
        sampler.generator = torch.Generator().manual_seed(seed)


class ResumedBatches:
    """The prompt loader with the batches of the steps already trained consumed, so the resumed
    run gets the very batches the uninterrupted run got next (TRL's loop re-iterates it per epoch)."""

    def __init__(self, loader: Any, done_steps: int) -> None:
        self.loader = loader
        self._pending: Iterator[Any] | None = iter(loader)
        skipped = 0
        while skipped < done_steps:
            try:
                next(self._pending)
                skipped += 1
            except StopIteration:  # an epoch ended: the next one, as TRL's repeat_generator does
                self._pending = iter(loader)

    def __iter__(self) -> Iterator[Any]:
        pending, self._pending = self._pending, None
        yield from pending if pending is not None else self.loader

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def load_optimizer_and_scheduler(trainer: PPOTrainer, checkpoint: Path) -> None:
    """Restore the optimizer and LR schedule saved by TRL's (transformers') checkpointing."""
    if trainer.is_deepspeed_enabled:
        # DeepSpeed keeps its own sharded optimizer checkpoints, which TRL's PPO never writes.
        raise NotImplementedError("--resume is not supported with DeepSpeed; see docs/trainer.md")
    # Loaded on the CPU: load_state_dict moves each state to its parameter's device (a
    # map_location of accelerator.device fails under several CPU processes: "cpu:0").
    trainer.optimizer.load_state_dict(
        torch.load(checkpoint / "optimizer.pt", map_location="cpu", weights_only=True)
    )
    trainer.lr_scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))


def find_resume_point(output_dir: str) -> ResumePoint:
    last = last_checkpoint(output_dir, value_model=True)
    if last is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint-* folder in {output_dir}")
    return ResumePoint.read(last)


# Training --------------------------------------------------------------------------------------


class RemoteRewardPPOTrainer(PPOTrainer):
    """TRL's PPOTrainer, plus the reward service's per-step figures in every log line."""

    reward_model: reward_bridge.RemoteRewardModel
    checkpoints_hold_value_model = True  # value_model/ beside the policy
    # transformers' Trainer.__init__ sets this; TRL's PPOTrainer skips that __init__, and `_save`
    # reads it on every process but the main one.
    is_distributed_loading_by_transformers = False

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        super().log({**logs, **self.reward_model.stats.pop()}, *args, **kwargs)

    @contextmanager
    def _unwrapped_model(self) -> Iterator[None]:
        """`self.model` without its DistributedDataParallel wrapper while TRL saves: TRL reads
        `.policy` and `.config` from it, which DDP hides (several processes crashed at the save)."""
        wrapped = self.model
        if not self.is_deepspeed_enabled:  # DeepSpeed saves through its own engine
            self.model = self.accelerator.unwrap_model(wrapped)
        try:
            yield
        finally:
            self.model = wrapped

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """TRL's checkpoint plus the critic (TRL saves only the policy; resuming needs both). The
        critic is written first, so that trainer_state.json, which TRL writes last, marks a whole
        checkpoint; a full disk raises DiskFull naming the folder."""
        folder = Path(self.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        with saving(folder), self._unwrapped_model():
            if self.state.is_world_process_zero:
                self.model.value_model.save_pretrained(folder / VALUE_MODEL_DIR)
            super()._save_checkpoint(self.model, trial)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        with saving(Path(output_dir or self.args.output_dir)), self._unwrapped_model():
            super().save_model(output_dir, _internal_call)

    def close_reward_clients(self) -> None:
        self.reward_model.client.close()

    def save_checkpoint_now(self) -> Path:
        """Save what TRL saves (policy, optimizer, scheduler, state) plus the value model, with the
        RNG states of the last whole step (trainer/step_rng.py)."""
        restore_last_step_end(self)
        self._save_checkpoint(self.model, trial=None)
        return Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"


@dataclass
class TrainingResult:
    output_dir: Path
    global_step: int
    log_history: list[dict[str, Any]]


def build_trainer(
    script_args: RLAIFArguments,
    ppo_config: PPOConfig,
    model_config: ModelConfig,
) -> tuple[RemoteRewardPPOTrainer, ResumePoint | None, Any]:
    """Everything up to `train()`: models, data, reward bridge, and the resume state if asked."""
    reward_bridge.install()
    seed_before_loading(ppo_config)
    base = model_config.model_name_or_path
    assert base, "model_name_or_path is required"
    point = find_resume_point(ppo_config.output_dir) if script_args.resume else None
    tokenizer = load_tokenizer(base, model_config)
    # Dataset first: its last check (prompt length in tokens) needs only the tokenizer.
    splits = splits_for(script_args, tokenizer, ppo_config.seed)

    peft_config = get_peft_config(model_config)
    if point is None:
        policy = load_policy(base, tokenizer, model_config)
        value_model = load_value_model(script_args.value_model_path or base, tokenizer, model_config)
    elif peft_config is not None:
        policy = load_policy(base, tokenizer, model_config, adapter=str(point.checkpoint))
        peft_config = None  # the adapter comes from the checkpoint
        value_model = load_value_model(str(point.checkpoint / VALUE_MODEL_DIR), tokenizer, model_config)
    else:
        policy = load_policy(str(point.checkpoint), tokenizer, model_config)
        value_model = load_value_model(str(point.checkpoint / VALUE_MODEL_DIR), tokenizer, model_config)
    # The KL reference is always the original policy, also on resume; with LoRA it is the base
    # with the adapter disabled (TRL's default when ref_model is None), so no second copy.
    use_lora = peft_config is not None or model_config.use_peft
    ref_policy = None if use_lora else load_policy(base, tokenizer, model_config)

    train_set = splits["train"]
    if script_args.max_train_samples is not None:
        train_set = train_set.select(range(min(script_args.max_train_samples, len(train_set))))
    # TRL's PPO only reads `input_ids`; it would also sample completions from eval_dataset, which we
    # leave to our own before/after evaluation (num_sample_generations=0 in the shipped configs).
    eval_set = splits["test"]
    columns = [c for c in train_set.column_names if c != "input_ids"]

    client = reward_client(script_args)
    reward_model = reward_bridge.RemoteRewardModel(
        client,
        tokenizer,
        scorer=script_args.reward_scorer,
        score_on=script_args.score_on,
        empty_response_penalty=script_args.empty_response_penalty,
    )
    # One service call per rollout batch: TRL calls get_reward once per forward chunk.
    ppo_config.local_rollout_forward_batch_size = max(
        ppo_config.local_rollout_forward_batch_size,
        ppo_config.per_device_train_batch_size * ppo_config.gradient_accumulation_steps,
    )
    callbacks: list[TrainerCallback] = [StepEndRandomStates()]
    trainer = RemoteRewardPPOTrainer(
        args=ppo_config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        value_model=value_model,
        train_dataset=train_set.remove_columns(columns),
        eval_dataset=eval_set.remove_columns(columns),
        callbacks=callbacks,
        peft_config=peft_config,
    )
    use_step_lines(trainer)
    own_data_order(trainer, ppo_config.seed)
    if point is not None:
        # The schedule keeps its full length (built from total_episodes above); only the loop is shortened.
        full_steps = ppo_config.num_total_batches
        ppo_config.num_total_batches = max(0, full_steps - point.global_step)
        load_optimizer_and_scheduler(trainer, point.checkpoint)
        trainer.dataloader = ResumedBatches(trainer.dataloader, point.global_step)
        trainer.add_callback(ResumeCounters(point, full_steps, trainer))
        continue_tensorboard(trainer, point.global_step)
        logger.info("resuming from %s at step %d of %d", point.checkpoint, point.global_step, full_steps)
    return trainer, point, splits


def run_training(trainer: Any, resume_from: Path | None = None) -> TrainingResult:
    """`train()` (PPO, GRPO or RLOO trainer of this project), then the final save. On a
    reward-service failure: checkpoint (if a step was trained) and raise TrainingInterrupted,
    saying whether a rerun with --resume can help. `resume_from`: a checkpoint for trainers that
    resume natively (GRPO, RLOO; PPO is resumed in build_trainer)."""
    output_dir = Path(trainer.args.output_dir)
    try:
        if resume_from is None:
            trainer.train()
        else:
            trainer.train(resume_from_checkpoint=str(resume_from))
    except RewardClientError as exc:
        try:
            stopped = _interrupted(trainer, exc)
        except DiskFull as full:
            raise _disk_full(trainer, full) from full
        raise stopped from exc
    except DiskFull as exc:
        raise _disk_full(trainer, exc) from exc
    finally:
        trainer.close_reward_clients()
    try:
        trainer.save_model(str(output_dir))
        _write_log(trainer)
    except DiskFull as exc:
        raise _disk_full(trainer, exc) from exc
    if trainer.args.should_save:
        mark_finished(output_dir, trainer.state.global_step)
    return TrainingResult(output_dir, trainer.state.global_step, trainer.state.log_history)


def _interrupted(trainer: Any, exc: RewardClientError) -> TrainingInterrupted:
    step = trainer.state.global_step
    checkpoint = None
    if step > 0:
        checkpoint = trainer.save_checkpoint_now()
        _write_log(trainer)
    saved = (
        f"Checkpoint of step {step} saved to {checkpoint}"
        if checkpoint
        else "No step was trained, so there is nothing to resume: rerun without --resume"
    )
    if isinstance(exc, RewardServiceUnavailable):
        then = "; start the service and rerun with --resume." if checkpoint else "."
        return TrainingInterrupted(
            f"training stopped at step {step}: the reward service was unavailable past the retry "
            f"budget ({exc}). No step was trained without rewards. {saved}{then}",
            checkpoint,
        )
    # A refusal (wrong key, unknown scorer, bad request, a score that cannot be computed): waiting
    # does not fix it, the configuration does.
    then = "; fix the setting it names, then rerun with --resume." if checkpoint else "."
    return TrainingInterrupted(
        f"training stopped at step {step}: the reward service refused the rewards ({exc}). {saved}{then}",
        checkpoint,
    )


def _disk_full(trainer: Any, exc: DiskFull) -> DiskFullStop:
    """Stop cleanly: remove the half-written checkpoint, name the last whole one and what to free."""
    step = trainer.state.global_step
    output_dir = Path(trainer.args.output_dir)
    value_model = trainer.checkpoints_hold_value_model
    removed = remove_if_incomplete(exc.folder, value_model=value_model)
    last = last_checkpoint(output_dir, value_model=value_model)
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    free_mb = shutil.disk_usage(existing).free / 2**20
    lost = f"the partial {exc.folder.name} was removed; " if removed else ""
    resume = (
        f"the last whole checkpoint is {last}: rerun with --resume once there is room"
        if last
        else "there is no whole checkpoint to resume from"
    )
    return DiskFullStop(
        f"training stopped at step {step}: the disk is full while saving {exc.folder} ({exc.__cause__}); "
        f"{lost}{resume}. Free space where {output_dir} lives ({free_mb:.0f} MiB free now): delete older "
        "checkpoint-* folders or other files, or keep fewer checkpoints with --save_total_limit.",
        last,
    )


def _write_log(trainer: Any) -> None:
    """train_log.json, written by the process that saves (the main one)."""
    if not trainer.args.should_save:
        return
    output_dir = Path(trainer.args.output_dir)
    with saving(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / TRAIN_LOG).write_text(json.dumps(trainer.state.log_history, indent=1))
