"""Reports say how sure they are: a seeded paired-bootstrap interval for the change, n, and a
warning when the sample is small, the interval includes 0, or no answer changed."""

from __future__ import annotations

import pytest

pytest.importorskip("trl")

from trainer.evaluate import EvalRow, render_markdown, summarise  # noqa: E402
from trainer.uncertainty import SMALL_N, paired_bootstrap  # noqa: E402

SAMPLING = {"seed": 7, "max_new_tokens": 4}


def _rows(before: list[float], after: list[float], same_text: bool = False) -> list[EvalRow]:
    return [
        EvalRow(
            query=f"q{i}",
            before="same" if same_text else f"b{i}",
            before_score=b,
            after="same" if same_text else f"a{i}",
            after_score=a,
            before_hate=0.9 if b < 0 else 0.1,
            after_hate=0.9 if a < 0 else 0.1,
        )
        for i, (b, a) in enumerate(zip(before, after, strict=True))
    ]


def test_a_few_flipped_answers_on_13_prompts_are_reported_as_possibly_noise() -> None:
    # The case: 13 prompts, 3 answers flip from hostile to harmless, "+79%".
    before = [-1.0] * 5 + [1.0] * 8
    after = [1.0] * 3 + [-1.0] * 2 + [1.0] * 8
    report = summarise(_rows(before, after), "roberta-hate", "response", SAMPLING)
    u = report.summary()["uncertainty"]
    assert u["n"] == 13 and u["mean"]["change"] == pytest.approx(6 / 13)
    low, high = u["mean"]["ci95"]
    assert low <= 0 < u["mean"]["change"] < high  # a +0.46 headline that may be noise
    assert any("includes 0: the change may be noise" in w for w in u["warnings"])
    assert any("only 13 held-out prompts" in w for w in u["warnings"])
    assert u["hate_share"]["change"] == pytest.approx(-3 / 13)
    # Answers only flipped from hateful to harmless, so no resample can show the share rising; the
    # interval holds the observed change and stays inside what 13 prompts allow.
    share_low, share_high = u["hate_share"]["ci95"]
    assert -1 <= share_low < -3 / 13 < share_high <= 0
    text = render_markdown(report)
    assert "95% interval" in text and "n = 13 prompts" in text and "**Warning:** only 13" in text


def test_the_interval_is_seeded_paired_and_narrows_with_more_prompts() -> None:
    before = [0.1 * (i % 7) for i in range(200)]
    after = [b + 0.5 + 0.05 * (i % 3) for i, b in enumerate(before)]
    first, again = paired_bootstrap(before, after, seed=3), paired_bootstrap(before, after, seed=3)
    assert first == again  # one seed, one report
    # Paired: a constant-ish shift is known precisely although the scores spread widely.
    low, high = first["ci95"]
    assert 0.5 < low < high < 0.6
    narrow = paired_bootstrap(before * 4, after * 4, seed=3)["ci95"]
    assert narrow[1] - narrow[0] < high - low
    report = summarise(_rows(before, after), "s", "response", SAMPLING)
    assert report.uncertainty["warnings"] == [] and len(before) >= SMALL_N


def test_no_answer_changed_and_a_mean_near_zero_are_said() -> None:
    scores = [(-1.0) ** i for i in range(40)]  # mean 0: change_pct would swell
    report = summarise(_rows(scores, scores, same_text=True), "s", "response", SAMPLING)
    warnings = report.uncertainty["warnings"]
    assert any("no answer changed" in w for w in warnings)
    assert any("near 0" in w and "change_pct" in w for w in warnings)
    assert report.uncertainty["answers_changed"] == 0


def test_scores_that_stop_varying_after_training_are_a_warning_in_the_report() -> None:
    """The tiny demo's seed 0: every answer after training scores about the classifier's best (std
    0.0008 against 2 before), from a handful of stock phrases. The headline rises; the report says
    why it may not mean better answers."""
    before = [-2.0, 2.0] * 16
    after = [2.89 + 0.001 * (i % 2) for i in range(32)]
    rows = _rows(before, after)
    for i, row in enumerate(rows):
        row.after = ("Thutiful today.", "Again, I like you.")[i % 2]  # two stock phrases
    report = summarise(rows, "roberta-hate", "response", SAMPLING)
    collapsed = [w for w in report.warnings if "hardly vary" in w]
    assert len(collapsed) == 1 and "std 0.0005, before 2; 2 distinct answers, 32 before" in collapsed[0]
    assert "hardly vary" in render_markdown(report)
    # The same scores from 32 different answers: the reward saturated, the answers did not collapse.
    varied = summarise(_rows(before, after), "roberta-hate", "response", SAMPLING)
    assert not any("hardly vary" in w for w in varied.warnings)
    # A spread that only narrows (here by half) is not flagged.
    halved = summarise(_rows(before, [x / 2 + 1 for x in before]), "roberta-hate", "response", SAMPLING)
    assert not any("hardly vary" in w for w in halved.warnings)
