"""What the trainer prints: one progress bar with a short line per logged step, and no library
warnings that say nothing to the user.

The full metrics still go to TensorBoard and `train_log.json`; the console shows what tells a
run going well from one going wrong: reward, KL, entropy, response length and empty answers.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# Console field -> the metric names that hold it (PPO's first, then GRPO's / RLOO's).
STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "reward": ("reward/mean", "reward"),
    "kl": ("objective/kl", "kl"),
    # Per token for every algorithm: PPO's objective/entropy is summed over the response.
    "entropy": ("policy/entropy_avg", "entropy"),
    "length": ("response/mean_tokens", "completions/mean_length"),
    "empty": ("response/empty_share",),
}

# Raised inside TRL or transformers on every run, whatever the user's settings; nothing to act on.
HARMLESS_WARNINGS = (
    r"`gradient_checkpointing` is deprecated",  # TRL's configs still use the old field name
    r"`is_gradient_checkpointing` is deprecated",
    r"`gradient_checkpointing_(enable|disable)` is deprecated",  # GRPO/RLOO, under the old names
)
HARMLESS_LOG_MESSAGES = (
    "Passing `generation_config` together with generation-related",  # TRL's own generate call
)


def step_line(logs: dict[str, Any], step: int, max_steps: int) -> str:
    """`step 3/40  reward 1.21  kl 0.41  entropy 9.1  length 10.4 tok  empty 0%` from one log entry."""
    values = {name: next((logs[k] for k in keys if k in logs), None) for name, keys in STEP_FIELDS.items()}
    parts = [f"step {step}/{max_steps}"]
    for name in ("reward", "kl", "entropy"):
        if values[name] is not None:
            parts.append(f"{name} {float(values[name]):.3g}")
    if values["length"] is not None:
        parts.append(f"length {float(values['length']):.1f} tok")
    if values["empty"] is not None:
        parts.append(f"empty {float(values['empty']):.0%}")
    return "  ".join(parts)


class StepProgress(ProgressCallback):
    """transformers' progress bar, with `step_line` instead of the raw metrics dict under it."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        line = step_line(logs, state.global_step, state.max_steps)
        if self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


class StepPrinter(TrainerCallback):
    """`--disable_tqdm true`: the same per-step line, without a bar (logs read by machines)."""

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and logs:
            print(step_line(logs, state.global_step, state.max_steps), flush=True)


def use_step_lines(trainer: Any) -> None:
    """Replace the trainer's dict-printing console callback by the per-step line."""
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(StepPrinter() if trainer.args.disable_tqdm else StepProgress())


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


def only_new_value_head(report: str) -> bool:
    """Whether a transformers load report lists nothing but a missing `score.*` head: the critic's
    new one-output head, initialised on purpose (any other missing or unexpected key is shown)."""
    rows = [line.split("|") for line in report.splitlines() if line.count("|") >= 2][1:]
    return bool(rows) and all(
        cells[0].strip().startswith("score.") and cells[1].strip() == "MISSING" for cells in rows
    )


class _DropNewValueHeadReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("LOAD REPORT" in message and only_new_value_head(message))


_log_filters_added = False


def hide_harmless_warnings() -> None:
    """Silence the known-harmless warnings above, the value head's expected load report, and
    datasets' per-`map` progress bars."""
    global _log_filters_added
    for pattern in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=FutureWarning)
    if not _log_filters_added:
        logging.getLogger("transformers.generation.utils").addFilter(_DropMessages(HARMLESS_LOG_MESSAGES))
        logging.getLogger("transformers.modeling_utils").addFilter(_DropNewValueHeadReport())
        _log_filters_added = True
    import datasets

    # A bar per map/filter over a few thousand prompts is noise; loading bars stay.
    datasets.disable_progress_bars()
