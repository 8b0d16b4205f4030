"""How sure a before/after report is: 95% intervals from a paired bootstrap over the prompts (each
resample draws prompts with replacement and keeps each prompt's before and after together),
seeded so a report is reproducible, and the caveats a reader should see next to the headline.

numpy only: a percentile bootstrap is a few lines, and it needs no normality assumption that 13
prompts could not support anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95
# Below this many prompts the interval itself is unreliable; the report says so.
SMALL_N = 30
# change_pct divides by the mean before; near 0 (relative to the spread) it swells.
NEAR_ZERO_RATIO = 0.25


def _interval(values: np.ndarray) -> tuple[float, float]:
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.nanpercentile(values, [tail, 100 - tail])
    return float(low), float(high)


def paired_bootstrap(
    before: Sequence[float], after: Sequence[float], seed: int, resamples: int = RESAMPLES
) -> dict[str, Any]:
    """The change of the mean (after - before) with its 95% interval, and the interval of
    change_pct (null where a resampled mean before is 0)."""
    b, a = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(b), size=(resamples, len(b)))
    mean_b, mean_a = b[picks].mean(axis=1), a[picks].mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(mean_b == 0, np.nan, 100 * (mean_a - mean_b) / np.abs(mean_b))
    low, high = _interval(mean_a - mean_b)
    pct_low, pct_high = _interval(pct) if not np.isnan(pct).all() else (None, None)
    return {
        "change": float(a.mean() - b.mean()),
        "ci95": [low, high],
        "change_pct_ci95": [pct_low, pct_high],
    }


def report_uncertainty(
    before: Sequence[float],
    after: Sequence[float],
    answers_changed: int,
    seed: int,
    hateful: tuple[Sequence[bool], Sequence[bool]] | None = None,
) -> dict[str, Any]:
    """`report.json`'s `uncertainty` section: n, method, the intervals and the caveats."""
    n = len(before)
    mean = paired_bootstrap(before, after, seed)
    found: dict[str, Any] = {
        "n": n,
        "method": f"paired bootstrap over prompts ({RESAMPLES} resamples, seed {seed}, percentile)",
        "answers_changed": answers_changed,
        "mean": mean,
        "hate_share": None,
    }
    if hateful is not None:
        share = paired_bootstrap([float(h) for h in hateful[0]], [float(h) for h in hateful[1]], seed)
        found["hate_share"] = {"change": share["change"], "ci95": share["ci95"]}
    warnings = []
    if n < SMALL_N:
        warnings.append(
            f"only {n} held-out prompts: the intervals are wide and themselves rough "
            f"(--eval_samples {SMALL_N} or more, with a --test_size that holds that many)"
        )
    if answers_changed == 0:
        warnings.append(
            "no answer changed between the original and the tuned policy: training had no effect here"
        )
    low, high = mean["ci95"]
    if answers_changed and low <= 0 <= high:
        warnings.append(
            f"the 95% interval of the change of the mean reward ({low:+.3f} to {high:+.3f}) includes 0: "
            "the change may be noise"
        )
    spread = float(np.std(before))
    if spread > 0 and abs(float(np.mean(before))) < NEAR_ZERO_RATIO * spread:
        warnings.append(
            f"the mean before ({np.mean(before):+.3f}) is near 0 for scores spread {spread:.3f}: change_pct "
            "swells; read the absolute change"
        )
    found["warnings"] = warnings
    return found


def headline(uncertainty: dict[str, Any], before_mean: float, after_mean: float) -> str:
    """The console's last figure: the change with its interval and sample size."""
    low, high = uncertainty["mean"]["ci95"]
    return (
        f"mean reward {before_mean:+.3f} -> {after_mean:+.3f}: change {after_mean - before_mean:+.3f} "
        f"(95% CI {low:+.3f} to {high:+.3f}, n={uncertainty['n']}, "
        f"{uncertainty['answers_changed']} answer(s) changed)"
    )
