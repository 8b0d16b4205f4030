"""What the answers look like beside their reward: mean length in tokens, share of empty ones, and
how many differ.

One definition for the training log (PPO's bridge, GRPO's / RLOO's `ResponseShape`) and the
evaluation report: a reward that rises while answers shrink to nothing is reward hacking.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def is_empty(text: str) -> bool:
    """An answer with nothing but whitespace."""
    return not text.strip()


def response_figures(texts: Sequence[str], tokens: Sequence[int | None]) -> dict[str, float | None]:
    """`mean_tokens` (None when no length is known), `empty_share` and how many are `distinct`
    (after stripping whitespace) of some answers."""
    known = [t for t in tokens if t is not None]
    return {
        "mean_tokens": statistics.fmean(known) if known else None,
        "empty_share": sum(map(is_empty, texts)) / len(texts),
        "distinct": len({text.strip() for text in texts}),
    }
