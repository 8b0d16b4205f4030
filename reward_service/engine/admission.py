"""Admission by work: refuse at once a request that cannot be scored before its deadline.

The engine measures the tokens per second it scores (a moving average over batches). A request
arriving with a budget (the seconds left before its deadline) is estimated under the engine's fair
round-robin: while R requests are queued, each gets about an equal share, so a request with `t`
tokens left finishes after `t + sum(min(t_j, t))` tokens of work, over the other requests' `t_j`.
It is refused (503 + Retry-After at the front end) when its own estimate is past its budget, or
when taking it would push a request already admitted, still on time, past its own deadline: the
requests admitted are the ones that finish, instead of every one of them missing its deadline.

Before a large enough batch has given a rate, every request is admitted: without a rate there is
no evidence that it cannot finish, and refusing work that would have finished (concurrent large
requests at start-up, say) wastes as much as a 504. Its deadline still bounds it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# Weight of the newest batch in the moving average of tokens per second.
RATE_SMOOTHING = 0.2
# Refuse only when the estimate is past the budget by this factor: the estimate is rough, and a
# refusal of work that would have finished wastes as much as a 504.
ESTIMATE_MARGIN = 1.1


@dataclass(frozen=True)
class Queued:
    """A request already admitted: tokens not yet scored, seconds left before its deadline (None:
    it has no deadline)."""

    tokens: int
    seconds_left: float | None


def finish_s(tokens: int, others: list[int], tokens_per_s: float) -> float:
    """Seconds until a request with `tokens` left finishes, sharing the engine fairly with `others`."""
    return (tokens + sum(min(other, tokens) for other in others)) / tokens_per_s


class MovingRate:
    """Tokens per second, a moving average over measurements of at least `min_tokens` tokens (None
    until one is): smaller ones time their fixed overheads more than the work."""

    def __init__(self, min_tokens: int = 0) -> None:
        self.tokens_per_s: float | None = None
        self._min_tokens = min_tokens

    def observe(self, tokens: int, seconds: float) -> None:
        """`tokens` real (unpadded) tokens took `seconds`."""
        if tokens <= 0 or seconds <= 0 or tokens < self._min_tokens:
            return
        rate = tokens / seconds
        self.tokens_per_s = (
            rate
            if self.tokens_per_s is None
            else (1 - RATE_SMOOTHING) * self.tokens_per_s + RATE_SMOOTHING * rate
        )


class Admission(MovingRate):
    """The engine's measured rate (batches under `min_rate_tokens` do not set it: their fixed
    per-batch cost dominates, so after a run of one-sample requests the rate would look many times
    slower than a large request gets, and large requests that would finish in time would be
    refused), and the refusals it implies."""

    def __init__(self, min_rate_tokens: int = 0) -> None:
        super().__init__(min_rate_tokens)

    def refusal(self, tokens: int, budget_s: float | None, queued: list[Queued]) -> str | None:
        """Why a request of `tokens` with `budget_s` seconds left must be refused now, or None."""
        rate = self.tokens_per_s
        if rate is None:
            return None
        return refusal_reason(tokens, budget_s, queued, rate)


def refusal_reason(
    tokens: int, budget_s: float | None, queued: list[Queued], tokens_per_s: float
) -> str | None:
    """Why a request of `tokens` with `budget_s` seconds left cannot be taken at `tokens_per_s`
    while `queued` requests share the work fairly, or None."""
    rate = tokens_per_s
    others = [q.tokens for q in queued]
    # Every finish time is at most all the work over the rate: when that fits inside every deadline
    # (this request's and the admitted ones'), nothing can be refused, and the O(R^2) check below is
    # skipped. This is the common case and keeps admission O(R) per request under many small ones.
    all_done_s = (tokens + sum(others)) / rate
    deadlines = [q.seconds_left for q in queued if q.seconds_left is not None]
    if budget_s is not None:
        deadlines.append(budget_s)
    if not deadlines or all_done_s <= min(deadlines):
        return None
    return fair_share_refusal(tokens, budget_s, queued, rate)


def fair_share_refusal(
    tokens: int, budget_s: float | None, queued: list[Queued], tokens_per_s: float
) -> str | None:
    """`refusal_reason` without its shortcut: each admitted request's finish time, one by one."""
    rate = tokens_per_s
    others = [q.tokens for q in queued]
    if budget_s is not None:
        own = finish_s(tokens, others, rate)
        if own > ESTIMATE_MARGIN * budget_s:
            return (
                f"its {tokens} tokens would be scored in about {own:.1f}s at {rate:.0f} tokens/s "
                f"behind {sum(others)} queued tokens, past its deadline in {budget_s:.1f}s"
            )
    for index, request in enumerate(queued):
        if request.seconds_left is None:
            continue
        rest = others[:index] + others[index + 1 :]
        before = finish_s(request.tokens, rest, rate)
        after = before + min(tokens, request.tokens) / rate
        if before <= request.seconds_left < after / ESTIMATE_MARGIN:
            return (
                f"taking it would make a request already admitted miss its deadline in "
                f"{request.seconds_left:.1f}s"
            )
    return None


class PendingWork:
    """The requests one front end has taken on for a scorer and not yet answered (estimated tokens,
    deadline as `time.monotonic()`): the work a new request would queue behind, before it is even
    tokenized."""

    def __init__(self) -> None:
        self._pending: dict[object, tuple[int, float]] = {}

    def refusal(self, tokens: int, budget_s: float | None, tokens_per_s: float) -> str | None:
        now = time.monotonic()
        queued = [
            Queued(estimate, deadline - now if math.isfinite(deadline) else None)
            for estimate, deadline in self._pending.values()
        ]
        return refusal_reason(tokens, budget_s, queued, tokens_per_s)

    @contextmanager
    def holding(self, tokens: int, deadline: float) -> Iterator[None]:
        """Count a request's `tokens` as pending until it is answered."""
        key = object()
        self._pending[key] = (tokens, deadline)
        try:
            yield
        finally:
            del self._pending[key]
