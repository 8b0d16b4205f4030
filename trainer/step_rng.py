"""The random-number states as they were when the last training step ended, for the checkpoint a
reward-service failure saves mid-step.

Such a checkpoint is written after the unfinished step has already sampled its completions, so the
RNG states of that moment would make the resumed step sample differently from a run the failure
never hit. The states at the end of the last whole step are the ones a scheduled checkpoint of that
step holds; putting them back before the save makes the resumed run continue as the uninterrupted
one would.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback


@dataclass(frozen=True)
class RandomStates:
    python: Any
    numpy: Any
    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None

    @classmethod
    def now(cls) -> RandomStates:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return cls(random.getstate(), np.random.get_state(), torch.random.get_rng_state(), cuda)

    def restore(self) -> None:
        random.setstate(self.python)
        np.random.set_state(self.numpy)
        torch.random.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)


class StepEndRandomStates(TrainerCallback):
    """Keeps the RNG states of each step's end (`on_step_end`, where a scheduled checkpoint is saved)."""

    def __init__(self) -> None:
        self.at_last_step_end: RandomStates | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.at_last_step_end = RandomStates.now()


def restore_last_step_end(trainer: Any) -> None:
    """Put back the RNG states of the last step's end, if `trainer` keeps them (before an
    out-of-schedule checkpoint; the run is stopping, so nothing else draws from them after)."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, StepEndRandomStates) and callback.at_last_step_end is not None:
            callback.at_last_step_end.restore()
