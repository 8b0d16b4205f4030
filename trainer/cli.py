"""`rlaif-train` and `rlaif-eval`: thin entry points over the dataclass arguments."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft import PeftModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig

from shared.errors import RewardClientError
from trainer.config import RLAIFArguments, TrainingConfig, kl_weight, max_new_tokens, parse_args
from trainer.data import DatasetError
from trainer.evaluate import EvalReport, Sampling, evaluate_policies, write_report
from trainer.preflight import PreflightError, check_output_dir, check_trained_model, run_preflight
from trainer.progress import hide_harmless_warnings
from trainer.run_dir import (
    RunDirError,
    claim_numbered_dir,
    finished_run,
    last_checkpoint,
    release_claimed_dirs,
)
from trainer.runners import RUNNERS
from trainer.train import (
    TRAIN_LOG,
    DiskFullStop,
    TrainingInterrupted,
    load_policy,
    load_tokenizer,
    reward_client,
    run_training,
    splits_for,
)
from trainer.uncertainty import headline
from trainer.usage import EXIT_USAGE, UsageError

EXIT_REWARD_SERVICE = 3
EXIT_DISK_FULL = 4
EXIT_CONFIGURATION = EXIT_USAGE


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per reward call would drown the training progress.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    hide_harmless_warnings()


def _sampling(script_args: RLAIFArguments, config: TrainingConfig) -> Sampling:
    # The same sampling as the PPO rollouts (top_k 0, top_p 1.0, TRL's temperature and length).
    return Sampling(
        max_new_tokens=max_new_tokens(config),
        temperature=config.temperature,
        seed=config.seed,
        batch_size=script_args.eval_batch_size,
    )


def run_evaluation(
    script_args: RLAIFArguments,
    config: TrainingConfig,
    before: PreTrainedModel,
    after: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: list[list[int]],
    log_history: list[dict[str, Any]],
    before_adapter_disabled: bool = False,
    run: dict[str, Any] | None = None,
) -> EvalReport:
    with reward_client(script_args) as client:
        report = evaluate_policies(
            before,
            after,
            tokenizer,
            prompt_ids[: script_args.eval_samples],
            client,
            _sampling(script_args, config),
            scorer=script_args.evaluation_scorer(),
            score_on=script_args.score_on,
            before_adapter_disabled=before_adapter_disabled,
            run=run,
            show_progress=not config.disable_tqdm,
        )
    write_report(report, config.output_dir, log_history)
    return report


def run_details(
    script_args: RLAIFArguments, config: TrainingConfig, policy: str, log_history: list[dict[str, Any]]
) -> dict[str, Any]:
    """What a report needs to be compared with another run's."""
    server_default = "(the service's default)"
    return {
        "policy": policy,
        "reward_scorer": script_args.reward_scorer or server_default,
        "eval_scorer": script_args.evaluation_scorer() or server_default,
        "score_on": script_args.score_on,
        "steps": max((int(e.get("step", 0)) for e in log_history), default=0),
        "algorithm": script_args.algorithm,
        "learning_rate": config.learning_rate,
        **kl_weight(config),
        **_data_details(script_args, config),
        "seed": config.seed,
        "commit": _source_commit(),
    }


def _data_details(script_args: RLAIFArguments, config: TrainingConfig) -> dict[str, Any]:
    return {
        "dataset": script_args.dataset_name or "Anthropic/hh-rlhf",
        "batch_size": config.per_device_train_batch_size * config.gradient_accumulation_steps,
    }


def eval_details(
    script_args: RLAIFArguments,
    config: TrainingConfig,
    base: str,
    tuned: Path,
    lora: bool,
    log_history: list[dict[str, Any]],
) -> dict[str, Any]:
    """`rlaif-eval`'s run section: what it compared, and of training only what its log records
    (its flags' defaults say nothing about how the model was trained)."""
    server_default = "(the service's default)"
    details: dict[str, Any] = {
        "evaluated": f"{tuned} ({'LoRA adapter on ' + base if lora else 'full model'})",
        "original": base,
        "eval_scorer": script_args.evaluation_scorer() or server_default,
        "score_on": script_args.score_on,
        "dataset": script_args.dataset_name or "Anthropic/hh-rlhf",
        "eval_batch_size": script_args.eval_batch_size,
        "seed": config.seed,
        "commit": _source_commit(),
    }
    if log_history:
        details["trained_steps"] = max(int(e.get("step", 0)) for e in log_history)
    return details


def _source_commit() -> str:
    # Images have no .git: Dockerfile.trainer bakes the commit in at build time.
    baked = os.environ.get("RLAIF_SOURCE_COMMIT", "").strip()
    if baked:
        return baked
    try:
        found = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown (not a git checkout)"


def _evaluate_and_report(
    script_args: RLAIFArguments,
    config: TrainingConfig,
    models: tuple[PreTrainedModel, PreTrainedModel, PreTrainedTokenizerBase],
    prompt_ids: list[list[int]],
    log_history: list[dict[str, Any]],
    before_adapter_disabled: bool,
    failure: str,
    run: dict[str, Any],
) -> int:
    """Run the before/after evaluation, print the summary; the exit status for the command."""
    before, after, tokenizer = models
    try:
        report = run_evaluation(
            script_args,
            config,
            before,
            after,
            tokenizer,
            prompt_ids,
            log_history,
            before_adapter_disabled,
            run=run,
        )
    except RewardClientError as exc:
        print(f"error: {failure}: {exc}", file=sys.stderr)
        return EXIT_REWARD_SERVICE
    print(json.dumps(report.summary(), indent=2))
    # The last lines a user reads: the change with how sure it is, then every caveat.
    print(headline(report.uncertainty, report.before["mean"], report.after["mean"]))
    for warning in [*report.warnings, *report.uncertainty["warnings"]]:
        print(f"warning: {warning}")
    print(f"report: {Path(config.output_dir) / 'report.md'}")
    return 0


def _preflight_failed(script_args: RLAIFArguments, exc: PreflightError) -> int:
    if script_args.show_traceback:
        raise exc
    print(f"error: {exc}", file=sys.stderr)
    return EXIT_CONFIGURATION


def _parsed(argv: Sequence[str] | None) -> tuple[RLAIFArguments, TrainingConfig, ModelConfig] | int:
    """The arguments, or the exit status of a usage error (printed as one line)."""
    try:
        return parse_args(argv)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION


def train_main(argv: Sequence[str] | None = None) -> int:
    """Train with PPO, GRPO or RLOO against the reward service, then evaluate before/after."""
    _setup_logging()
    parsed = _parsed(argv)
    if isinstance(parsed, int):
        return parsed
    script_args, config, model_config = parsed
    try:
        return _train(script_args, config, model_config)
    except DatasetError as exc:  # the token-length filter, run once the tokenizer is loaded
        return _preflight_failed(script_args, PreflightError(f"--dataset_name: {exc}"))
    finally:
        release_claimed_dirs()


def _train(script_args: RLAIFArguments, config: TrainingConfig, model_config: ModelConfig) -> int:
    try:
        if script_args.numbered_output_dir:
            config.output_dir = str(claim_numbered_dir(config.output_dir))
            print(f"output folder: {config.output_dir}", flush=True)
    except RunDirError as exc:
        return _preflight_failed(script_args, PreflightError(str(exc)))
    if script_args.auto_resume:
        finished = finished_run(config.output_dir)
        if finished is not None:
            print(
                f"{config.output_dir} holds a run that finished at step {finished['global_step']}: "
                "nothing to do (start a new run with another --output_dir or RLAIF_RUN_NAME)"
            )
            return 0
        ppo = script_args.algorithm == "ppo"
        script_args.resume = last_checkpoint(config.output_dir, value_model=ppo) is not None
    try:
        run_preflight(script_args, model_config, config.output_dir)
    except PreflightError as exc:
        return _preflight_failed(script_args, exc)
    runner = RUNNERS[script_args.algorithm]
    trainer, splits, resume_from = runner.build(script_args, config, model_config)
    try:
        result = run_training(trainer, resume_from)
    except TrainingInterrupted as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DISK_FULL if isinstance(exc, DiskFullStop) else EXIT_REWARD_SERVICE
    if script_args.skip_eval or not trainer.accelerator.is_main_process:
        return 0
    tuned = runner.trained_policy(trainer.accelerator.unwrap_model(trainer.model))
    lora = isinstance(tuned, PeftModel)
    # With LoRA the original policy is the same model with its adapter disabled.
    original = (
        tuned
        if lora
        else load_policy(model_config.model_name_or_path, trainer.processing_class, model_config)
    )
    original.to(tuned.device)
    return _evaluate_and_report(
        script_args,
        config,
        (original, tuned, trainer.processing_class),
        splits["test"]["input_ids"],
        result.log_history,
        before_adapter_disabled=lora,
        failure="training finished and was saved, but evaluation failed",
        run=run_details(script_args, config, model_config.model_name_or_path or "", result.log_history),
    )


def eval_main(argv: Sequence[str] | None = None) -> int:
    """Compare the original policy with a tuned one (default: --output_dir) on the held-out split."""

    _setup_logging()
    parsed = _parsed(argv)
    if isinstance(parsed, int):
        return parsed
    script_args, config, model_config = parsed
    tuned_path = Path(script_args.eval_model or config.output_dir)
    base = model_config.model_name_or_path
    assert base
    try:
        check_trained_model(tuned_path)
        check_output_dir(config.output_dir)  # where the report goes: found before the models load
        run_preflight(script_args, model_config)
    except PreflightError as exc:
        return _preflight_failed(script_args, exc)
    tokenizer = load_tokenizer(
        str(tuned_path) if (tuned_path / "tokenizer_config.json").exists() else base, model_config
    )
    try:
        splits = splits_for(script_args, tokenizer, config.seed)
    except DatasetError as exc:
        return _preflight_failed(script_args, PreflightError(f"--dataset_name: {exc}"))
    lora = (tuned_path / "adapter_config.json").exists()
    if lora:
        tuned = load_policy(base, tokenizer, model_config, adapter=str(tuned_path))
        original = tuned
    else:
        tuned = load_policy(str(tuned_path), tokenizer, model_config)
        original = load_policy(base, tokenizer, model_config)
    log_path = next(
        (p for p in (tuned_path / TRAIN_LOG, Path(config.output_dir) / TRAIN_LOG) if p.exists()), tuned_path
    )
    log_history = json.loads(log_path.read_text()) if log_path.is_file() else []
    return _evaluate_and_report(
        script_args,
        config,
        (original, tuned, tokenizer),
        splits["test"]["input_ids"],
        log_history,
        before_adapter_disabled=lora,
        failure="evaluation failed",
        run=eval_details(script_args, config, base, tuned_path, lora, log_history),
    )


def main() -> None:
    sys.exit(train_main())


def main_eval() -> None:
    sys.exit(eval_main())
