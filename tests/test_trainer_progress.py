"""The console: one short line per step instead of metric dicts, and only the warnings that matter."""

from __future__ import annotations

import logging
import warnings

import pytest

pytest.importorskip("trl")

from trainer.progress import hide_harmless_warnings, only_new_value_head, step_line  # noqa: E402

PPO_LOG = {
    "objective/kl": 0.4123,
    "objective/entropy": 99.0,  # summed over the response: not what the line shows
    "policy/entropy_avg": 6.21,  # per token, as GRPO's / RLOO's "entropy"
    "objective/scores": 1.0,
    "reward/mean": 1.2149,
    "response/mean_tokens": 10.44,
    "response/empty_share": 0.125,
    "lr": 0.001,
}


def test_step_line_shows_what_tells_a_good_run_from_a_bad_one() -> None:
    line = step_line(PPO_LOG, 3, 40)
    assert line == "step 3/40  reward 1.21  kl 0.412  entropy 6.21  length 10.4 tok  empty 12%"
    # GRPO / RLOO name their metrics differently; the line is the same shape.
    grpo = {"reward": -0.5, "kl": 0.01, "entropy": 2.0, "completions/mean_length": 7.0}
    assert step_line(grpo, 1, 2) == "step 1/2  reward -0.5  kl 0.01  entropy 2  length 7.0 tok"


def test_every_algorithm_logs_every_step_by_default() -> None:
    from trainer.config import parse_args

    for algorithm in ("ppo", "grpo", "rloo"):
        config = parse_args(["--model_name_or_path", "m", "--algorithm", algorithm, "--use_cpu", "true"])[1]
        assert config.logging_steps == 1, algorithm


def test_only_the_value_heads_expected_load_report_is_hidden() -> None:
    expected = "Key          | Status  | \n-------------+---------+-\nscore.weight | MISSING | \n"
    assert only_new_value_head(expected)
    wrong_model = expected + "transformer.h.0.attn.c_attn.weight | MISSING | \n"
    assert not only_new_value_head(wrong_model)
    unexpected = "Key | Status |\nscore.weight | UNEXPECTED |\n"
    assert not only_new_value_head(unexpected)


def test_known_harmless_warnings_are_hidden_and_others_kept(caplog: pytest.LogCaptureFixture) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hide_harmless_warnings()
        warnings.warn("`gradient_checkpointing` is deprecated", FutureWarning, stacklevel=1)
        warnings.warn("something the user must see", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something the user must see"]

    report_logger = logging.getLogger("transformers.modeling_utils")
    propagate, report_logger.propagate = report_logger.propagate, True  # transformers stops it
    try:
        with caplog.at_level(logging.WARNING, logger="transformers.modeling_utils"):
            report_logger.warning("X LOAD REPORT from: p\nKey | Status |\nscore.weight | MISSING |\n")
            report_logger.warning("X LOAD REPORT from: p\nKey | Status |\nlm_head.weight | MISSING |\n")
    finally:
        report_logger.propagate = propagate
    assert len(caplog.records) == 1 and "lm_head.weight" in caplog.records[0].getMessage()
