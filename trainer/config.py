"""Arguments, parsed like TRL's own scripts: `TrlParser((RLAIFArguments, PPOConfig, ModelConfig))`.

Every knob is a dataclass field with a help string, so it is a CLI flag, a YAML key
(`--config configs/x.yaml`) and documentation at once. TRL's `PPOConfig` brings the PPO and
generation flags (`--output_dir`, `--total_episodes`, `--learning_rate`, `--response_length`...),
`ModelConfig` the model and LoRA flags (`--model_name_or_path`, `--use_peft`, `--lora_r`...).
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

import yaml
from trl import GRPOConfig, ModelConfig, RLOOConfig, ScriptArguments, TrlParser
from trl.experimental.ppo import PPOConfig

from shared.client import api_key_or_env
from trainer.shipped_configs import shipped_configs, with_shipped_config
from trainer.usage import UsageError

DEFAULT_REWARD_URL = "http://127.0.0.1:8000"


@dataclass
class RLAIFArguments(ScriptArguments):
    """Dataset, reward service and evaluation settings (TRL's `ScriptArguments` plus ours)."""

    algorithm: Literal["ppo", "grpo", "rloo"] = field(
        default="ppo",
        metadata={
            "help": "ppo (TRL's PPO with a value model, the reference pipeline), grpo or rloo (TRL's "
            "GRPOTrainer / RLOOTrainer: several completions per prompt, no value model). Each brings "
            "its own TRL flags (e.g. --kl_coef for ppo, --beta and --num_generations for grpo/rloo)."
        },
    )
    dataset_name: str | None = field(
        default="Anthropic/hh-rlhf",
        metadata={
            "help": "Hub id (e.g. Anthropic/hh-rlhf) or a local JSON/JSONL/parquet file or directory. "
            "Rows with a `chosen` dialogue (hh-rlhf) become summarisation prompts; rows with a `prompt` "
            "column (text, or a list of role/content messages) are used as they are."
        },
    )
    reward_url: str = field(
        default_factory=lambda: os.environ.get("REWARD_URL") or DEFAULT_REWARD_URL,
        metadata={
            "help": "Reward service base URL, or several separated by commas: the client spreads "
            f"requests over them and fails over (default: $REWARD_URL, else {DEFAULT_REWARD_URL})."
        },
    )
    reward_scorer: str | None = field(
        default=None,
        metadata={
            "help": "Scorer used for the training reward (default: the server's default). grpo/rloo: "
            "several, comma-separated (e.g. roberta-hate,claude-bedrock), one reward function each, "
            "weighted by --reward_weights and called concurrently."
        },
    )
    reward_api_key: str | None = field(
        default=None, metadata={"help": "Bearer key for the reward service (default: env REWARD_API_KEY)."}
    )
    score_on: Literal["query_response", "response"] = field(
        default="query_response",
        metadata={
            "help": "Score query + response concatenated (as in the reference article) or the response alone."
        },
    )
    empty_response_penalty: float = field(
        default=0.0,
        metadata={
            "help": "Subtracted from the training reward of an empty response (every algorithm; the "
            "service's scores and the evaluation are unchanged). A classifier that rates silence as "
            "harmless makes empty answers the cheapest reward: the demo uses 3.0."
        },
    )
    value_model_path: str | None = field(
        default=None,
        metadata={
            "help": "Critic backbone (default: the policy's). A smaller model with the same tokenizer "
            "saves memory with 8B policies."
        },
    )
    reward_timeout_s: float = field(default=60.0, metadata={"help": "Timeout of one reward request."})
    reward_max_wait_s: float = field(
        default=120.0,
        metadata={
            "help": "How long one reward call keeps retrying an unreachable or overloaded service "
            "before training stops (after saving a checkpoint); a console line says it is waiting."
        },
    )
    reward_max_attempts: int | None = field(
        default=None,
        metadata={
            "help": "Most attempts per reward call before training stops (default: no cap, only "
            "--reward_max_wait_s)."
        },
    )
    min_dialogue_chars: int = field(
        default=100, metadata={"help": "Keep hh-rlhf dialogues strictly longer than this many characters."}
    )
    max_dialogue_chars: int = field(
        default=500, metadata={"help": "Keep hh-rlhf dialogues at most this many characters long."}
    )
    max_prompt_tokens: int = field(
        default=1024, metadata={"help": "Drop prompts longer than this many tokens after templating."}
    )
    test_size: float = field(
        default=0.2, metadata={"help": "Share of the prompts held out for evaluation (never trained on)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use at most this many training prompts (quick runs)."}
    )
    eval_samples: int = field(
        default=100, metadata={"help": "Held-out prompts generated and scored before/after training."}
    )
    eval_scorer: str | None = field(
        default=None,
        metadata={
            "help": "Scorer for the before/after evaluation (default: the training reward's scorer, "
            "the first of several). The hate share needs one with labels (a classifier)."
        },
    )
    eval_model: str | None = field(
        default=None,
        metadata={
            "help": "rlaif-eval: tuned policy (full model or LoRA adapter) to compare "
            "(default: --output_dir)."
        },
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch in evaluation."})
    skip_eval: bool = field(
        default=False, metadata={"help": "Do not run the before/after evaluation at the end of training."}
    )
    show_traceback: bool = field(
        default=False, metadata={"help": "Show the full traceback of a configuration error."}
    )
    resume: bool = field(
        default=False,
        metadata={
            "help": "Continue from the last checkpoint in --output_dir (weights, optimizer, step count)."
        },
    )
    auto_resume: bool = field(
        default=False,
        metadata={
            "help": "Continue from the last checkpoint in --output_dir when there is one, start fresh "
            "otherwise; a run that already finished there is not repeated (exit 0). For restarts."
        },
    )
    numbered_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Write to <output_dir>-N, the lowest N no running trainer holds: trainers started "
            "with the same flags (docker compose --scale) get their own folders, and a restarted one "
            "takes a folder back. One process per trainer."
        },
    )

    def api_key(self) -> str | None:
        return api_key_or_env(self.reward_api_key)

    def evaluation_scorer(self) -> str | None:
        """--eval_scorer, else the (first) training scorer; None = the service's default."""
        return self.eval_scorer or self.reward_scorers()[0]

    def reward_scorers(self) -> list[str | None]:
        """The training scorers, in order; [None] = the service's default scorer."""
        if not self.reward_scorer:
            return [None]
        return [name.strip() for name in self.reward_scorer.split(",")]


def bf16_supported() -> bool:
    """Whether this machine's accelerator computes in bf16 (an Ampere or newer GPU)."""
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class _ProjectDefaults:
    """Defaults this project changes in every TRL trainer config."""

    bf16: bool | None = field(
        default=None,
        metadata={
            "help": "bf16 mixed precision. Default: on where the GPU supports it, off otherwise (CPU, "
            "older GPUs); TRL's own default (on) fails on those."
        },
    )
    logging_steps: float = field(
        default=1,
        metadata={"help": "Log every N steps (default 1: every step, as TRL's PPO always does)."},
    )
    report_to: None | str | list[str] = field(
        default="tensorboard",
        metadata={"help": "Where to log ('tensorboard' by default, logs under <output_dir>/runs; 'none')."},
    )

    def __post_init__(self) -> None:
        if self.bf16 is None:
            self.bf16 = not self.fp16 and bf16_supported()  # type: ignore[attr-defined]
        super().__post_init__()  # type: ignore[misc]


@dataclass
class RLAIFPPOConfig(_ProjectDefaults, PPOConfig):
    """TRL's PPOConfig with three defaults changed for this project."""

    num_sample_generations: int = field(
        default=0,
        metadata={
            "help": "TRL's sampled completion tables during training; 0 because the before/after "
            "evaluation is done at the end (each table would also cost reward calls)."
        },
    )


@dataclass
class RLAIFGRPOConfig(_ProjectDefaults, GRPOConfig):
    """TRL's GRPOConfig with this project's precision and logging defaults."""


@dataclass
class RLAIFRLOOConfig(_ProjectDefaults, RLOOConfig):
    """TRL's RLOOConfig with this project's precision and logging defaults."""


TrainingConfig = PPOConfig | GRPOConfig | RLOOConfig


def max_new_tokens(config: TrainingConfig) -> int:
    """Response length in tokens: PPO's --response_length, GRPO's / RLOO's --max_completion_length."""
    if isinstance(config, PPOConfig):
        return config.response_length
    return config.max_completion_length or 256


def kl_weight(config: TrainingConfig) -> dict[str, float]:
    """The KL penalty's weight, under its flag's name (PPO's kl_coef, GRPO's / RLOO's beta)."""
    if isinstance(config, PPOConfig):
        return {"kl_coef": config.kl_coef}
    return {"beta": config.beta}


CONFIG_CLASSES: dict[str, type] = {"ppo": RLAIFPPOConfig, "grpo": RLAIFGRPOConfig, "rloo": RLAIFRLOOConfig}


# The flags each algorithm's --help recommends besides the common ones (only flags it takes).
ALGORITHM_FLAGS = {
    "ppo": "--total_episodes, --learning_rate, --kl_coef",
    "grpo": "--max_steps, --learning_rate, --beta, --num_generations, --max_completion_length",
    "rloo": "--max_steps, --learning_rate, --beta, --num_generations, --max_completion_length",
}
USAGE = """%(prog)s --config qwen25_05b --reward_url http://HOST:8000 [flags]
       %(prog)s --config configs/qwen25_05b.yaml --reward_url http://HOST:8000 [flags]
       %(prog)s --model_name_or_path MODEL --dataset_name Anthropic/hh-rlhf --reward_url URL [flags]

The flags that matter most: --config (a YAML file holding any of the flags below, or the name
of a config shipped with the package: {configs}; flags on the command
line win), --model_name_or_path, --dataset_name, --reward_url (one URL or several,
comma-separated), --reward_scorer, --score_on, --output_dir, --resume, and for --algorithm
{algorithm}: {algorithm_flags}. Configuration errors are checked before any model loads (exit
status 2).
"""
# TRL's ScriptArguments flags that this trainer ignores: not shown in --help (still accepted).
UNUSED_FLAGS = ("--dataset_test_split", "--dataset_streaming", "--ignore_bias_buffers")
# This trainer's own flags for PPO's value model (critic): hidden from grpo/rloo's --help and
# refused there (parse_args reads this list for both).
PPO_ONLY_FLAGS = ("--value_model_path",)


class _OneLineErrors(TrlParser):
    """argparse's own errors (a bad value, an invalid choice) as one `error:` line and exit 2, like
    every other usage error, instead of the whole usage block."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message}; see --help")


def parser(algorithm: str = "ppo") -> TrlParser:
    usage = USAGE.format(
        configs=", ".join(shipped_configs()), algorithm=algorithm, algorithm_flags=ALGORITHM_FLAGS[algorithm]
    )
    # allow_abbrev=False: a typo that is a prefix (`--learning_rat`) is an unknown flag, not silently
    # another flag.
    built = _OneLineErrors(
        (RLAIFArguments, CONFIG_CLASSES[algorithm], ModelConfig), usage=usage, allow_abbrev=False
    )
    hidden = UNUSED_FLAGS if algorithm == "ppo" else UNUSED_FLAGS + PPO_ONLY_FLAGS
    for action in built._actions:  # argparse has no public way to hide an added flag
        if any(option in hidden for option in action.option_strings):
            action.help = argparse.SUPPRESS
    return built


def requested_algorithm(args: Sequence[str]) -> str:
    """--algorithm from the command line, else from the --config file, else ppo: it decides which
    TRL config class parses the other flags, so it is read before them."""
    found: str | None = None
    config_file: str | None = None
    for i, arg in enumerate(args):
        if arg.startswith("--algorithm="):
            found = arg.split("=", 1)[1]
        elif arg == "--algorithm" and i + 1 < len(args):
            found = args[i + 1]
        elif arg == "--config" and i + 1 < len(args):
            config_file = args[i + 1]
    # The file is read here even when --algorithm is given, so that invalid YAML is one usage line
    # whichever flags come with it (TRL's parser would raise yaml's error as it is).
    if config_file is not None and Path(config_file).is_file():
        try:
            loaded = yaml.safe_load(Path(config_file).read_text()) or {}
        except yaml.YAMLError as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            problem = getattr(exc, "problem", None) or type(exc).__name__
            raise UsageError(f"--config {config_file}: not valid YAML{at}: {problem}") from None
        if found is None and isinstance(loaded, dict):
            found = loaded.get("algorithm")
    algorithm = str(found or "ppo").lower()
    if algorithm not in CONFIG_CLASSES:
        raise UsageError(f"--algorithm {algorithm}: choose one of {', '.join(CONFIG_CLASSES)}")
    return algorithm


def _flags_of(algorithm: str) -> set[str]:
    return {
        option.removeprefix("--") for action in parser(algorithm)._actions for option in action.option_strings
    }


def unknown_flag_hint(message: str, algorithm: str) -> str | None:
    """For the first flag or YAML key HfArgumentParser did not take: the algorithm whose flag it is,
    or this algorithm's flag it is closest to (a typo); None if neither."""
    names = re.findall(r"'(?:--)?([A-Za-z][\w-]*)(?:=[^']*)?'", message)
    if not names:
        return None
    name = names[0]
    owners = [other for other in CONFIG_CLASSES if other != algorithm and name in _flags_of(other)]
    if owners:
        return f"--{name} is a flag of --algorithm {' and '.join(owners)}, not of {algorithm}"
    close = difflib.get_close_matches(name, sorted(_flags_of(algorithm)), n=1, cutoff=0.8)
    return f"Did you mean --{close[0]}?" if close else None


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[RLAIFArguments, TrainingConfig, ModelConfig]:
    """Parse flags and an optional `--config x.yaml` (flags win over the file)."""
    args = with_shipped_config(sys.argv[1:] if argv is None else argv)
    algorithm = requested_algorithm(args)
    try:
        script_args, training_config, model_config = parser(algorithm).parse_args_and_config(args=args)
    except ValueError as exc:  # HfArgumentParser: flags or YAML keys no dataclass takes
        hint = unknown_flag_hint(str(exc), algorithm)
        raise UsageError(
            f"{str(exc).rstrip('.')}. {hint or 'Each --algorithm takes its own TRL flags'} (this run: "
            f"{algorithm}); see rlaif-train --algorithm {algorithm} --help"
        ) from exc
    script_args.algorithm = algorithm  # type: ignore[assignment]
    given = [flag for flag in PPO_ONLY_FLAGS if getattr(script_args, flag.removeprefix("--"))]
    if algorithm != "ppo" and given:
        raise UsageError(
            f"{given[0]}: only PPO trains a value model (critic); --algorithm {algorithm} "
            "uses none, so the flag would be ignored"
        )
    if not model_config.model_name_or_path:
        raise UsageError("--model_name_or_path is required (a hub id or a local directory)")
    scorers = script_args.reward_scorers()
    if script_args.reward_scorer is not None and not all(scorers):
        raise UsageError(f"--reward_scorer {script_args.reward_scorer!r}: a scorer name is empty")
    if algorithm == "ppo" and len(scorers) > 1:
        raise UsageError(
            "--reward_scorer: PPO takes one scorer; combine several into a weighted ensemble on the "
            "service (REWARD_ENSEMBLES) or use --algorithm grpo / rloo"
        )
    weights = getattr(training_config, "reward_weights", None)
    if weights is not None and len(weights) != len(scorers):
        raise UsageError(
            f"--reward_weights: {len(weights)} weight(s) for {len(scorers)} scorer(s) in --reward_scorer"
        )
    return script_args, training_config, model_config
