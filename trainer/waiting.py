"""The trainer's retry policy for reward calls: `--reward_max_wait_s` is the whole budget (no
attempt cap unless `--reward_max_attempts` is given), and while a call waits for the service a line
on the console says so, so that a stalled run does not look hung."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from typing import Any

from tenacity import RetryCallState

from shared.client import RetryPolicy

logger = logging.getLogger("trainer.reward")


@dataclass
class WaitingRetryPolicy(RetryPolicy):
    """RetryPolicy that reports a call still waiting after `report_after_s`, then every `report_every_s`."""

    max_attempts: int = sys.maxsize
    report_after_s: float = 5.0
    report_every_s: float = 10.0
    _reported: dict[int, float] = field(default_factory=dict, repr=False)

    def tenacity_kwargs(self) -> dict[str, Any]:
        kwargs = super().tenacity_kwargs()
        kwargs["before_sleep"] = self._report
        return kwargs

    def _report(self, state: RetryCallState) -> None:
        waited = state.seconds_since_start or 0.0
        last = self._reported.get(id(state))
        due = waited >= self.report_after_s and (last is None or waited - last >= self.report_every_s)
        if not due:
            return
        if len(self._reported) > 64:  # states of finished calls
            self._reported.clear()
        self._reported[id(state)] = waited
        exc = state.outcome.exception() if state.outcome else None
        logger.warning(
            "reward service unreachable for %.0f s (%s), retrying until %.0f s",
            waited,
            getattr(exc, "reason", exc),
            self.max_total_s,
        )
