"""Learning through the real service over HTTP, and the before/after report of that same run.

One PPO run (tiny GPT-2 policy, tiny RoBERTa served by the reward service on a loopback port) is
shared by the tests of this module to save CPU time.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("trl")

from trl import ModelConfig  # noqa: E402
from trl.experimental.ppo import PPOConfig  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import LiveServer  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from shared.client import RewardClient  # noqa: E402
from trainer.cli import run_evaluation  # noqa: E402
from trainer.config import RLAIFArguments  # noqa: E402
from trainer.evaluate import MAX_EMPTY_SHARE, EvalReport, change_pct, read_rows, summarise  # noqa: E402
from trainer.train import TRAIN_LOG, build_trainer, load_policy, run_training  # noqa: E402

STEPS = 30
MARGIN = 1.0  # logits of the nothate class; the policy starts about one third hostile


EMPTY_PENALTY = 3.0


def tiny_ppo_config(output_dir: Path, steps: int, batch: int = 16, **overrides: object) -> PPOConfig:
    """Settings that learn quickly with a tiny policy on CPU (those of configs/demo.yaml)."""
    settings: dict[str, object] = {
        "output_dir": str(output_dir),
        "learning_rate": 1e-3,
        "kl_coef": 0.3,
        "num_ppo_epochs": 4,
        "num_mini_batches": 1,
        "per_device_train_batch_size": batch,
        "total_episodes": batch * steps,
        "response_length": 16,
        "temperature": 1.0,
        "stop_token": "eos",
        "num_sample_generations": 0,
        "report_to": [],
        "bf16": False,
        "gradient_checkpointing": False,
        "use_cpu": True,
        "seed": 0,
        "save_strategy": "no",
        "disable_tqdm": True,
    }
    settings.update(overrides)
    return PPOConfig(**settings)


@dataclass
class Run:
    report: EvalReport
    output_dir: Path
    log_history: list[dict]
    script_args: RLAIFArguments


@pytest.fixture(scope="module")
def trained(live_service: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("learning")
    policy = build_tiny_policy(root / "policy", pretrain_steps=120)
    data = write_hh_jsonl(root / "hh.jsonl", n=200)
    script_args = RLAIFArguments(
        dataset_name=str(data),
        reward_url=live_service.url,
        score_on="response",
        eval_samples=32,
        empty_response_penalty=EMPTY_PENALTY,
    )
    ppo_config = tiny_ppo_config(root / "out", STEPS)
    model_config = ModelConfig(model_name_or_path=str(policy))
    trainer, _, splits = build_trainer(script_args, ppo_config, model_config)
    result = run_training(trainer)
    tuned = trainer.accelerator.unwrap_model(trainer.model).policy
    original = load_policy(str(policy), trainer.processing_class, model_config)
    report = run_evaluation(
        script_args,
        ppo_config,
        original,
        tuned,
        trainer.processing_class,
        splits["test"]["input_ids"],
        result.log_history,
    )
    return Run(report, result.output_dir, result.log_history, script_args)


@pytest.mark.slow
def test_held_out_reward_rises(trained: Run) -> None:
    report = trained.report
    assert report.n == 32
    assert report.after["mean"] - report.before["mean"] >= MARGIN, report.summary()
    # Not by falling silent: few empty answers, and answers about as long as before.
    print(report.responses, report.warnings)
    assert report.responses["after"]["empty_share"] <= MAX_EMPTY_SHARE, report.responses
    assert report.responses["after"]["mean_tokens"] >= 0.5 * report.responses["before"]["mean_tokens"]
    assert report.warnings == []
    # The training reward (from the service, logged per step) rose too.
    rewards = [e["reward/mean"] for e in trained.log_history if "reward/mean" in e]
    assert len(rewards) == STEPS
    assert statistics.fmean(rewards[-5:]) > statistics.fmean(rewards[:5])
    # The per-step figures the issue asks for sit beside TRL's own.
    last = [e for e in trained.log_history if "reward/mean" in e][-1]
    for key in (
        "reward/std",
        "reward/call_latency_s",
        "objective/kl",
        "objective/rlhf_reward",
        "loss/policy_avg",
        "response/mean_tokens",
        "response/empty_share",
    ):
        assert key in last


@pytest.mark.slow
def test_report_files_match_a_recomputation(trained: Run, live_service: LiveServer) -> None:
    out = trained.output_dir
    for name in (
        "report.json",
        "report.md",
        "responses.jsonl",
        "reward_per_step.png",
        "training_curves.png",
        "score_distribution.png",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "model.safetensors").exists() and (out / TRAIN_LOG).exists()
    saved = json.loads((out / "report.json").read_text())
    rows = read_rows(out / "responses.jsonl")
    assert len(rows) == saved["n"] == 32
    # Figures recomputed from the saved responses and scores.
    again = summarise(rows, saved["scorer"], saved["score_on"], saved["sampling"]).summary()
    for part in ("before", "after", "change_pct"):
        for stat in ("mean", "std"):
            assert saved[part][stat] == pytest.approx(again[part][stat], rel=1e-9), (part, stat)
    before_mean, after_mean = saved["before"]["mean"], saved["after"]["mean"]
    assert saved["change_pct"]["mean"] == pytest.approx(100 * (after_mean - before_mean) / abs(before_mean))
    assert saved["hate_share"] == again["hate_share"]
    assert saved["responses"] == again["responses"] and saved["warnings"] == again["warnings"]
    # Lengths were counted in tokens for every row, on both sides.
    assert all(r.before_tokens is not None and r.after_tokens is not None for r in rows)
    assert saved["hate_share"]["before"] > saved["hate_share"]["after"]
    # The saved scores are what the service gives for the saved responses.
    with RewardClient(live_service.url) as client:
        rescored = client.score(
            queries=[r.query for r in rows], responses=[r.after for r in rows], score_on=saved["score_on"]
        ).scores
    assert rescored == pytest.approx([r.after_score for r in rows], abs=1e-4)
    markdown = (out / "report.md").read_text()
    assert f"{before_mean:.4f}" in markdown and f"{after_mean:.4f}" in markdown
    assert markdown.count("\n| Summarize the following conversation.") == 10


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [(2.0, 3.0, 50.0), (-2.0, -1.0, 50.0), (-2.0, -3.0, -50.0), (-1.0, 1.0, 200.0), (0.0, 1.0, None)],
)
def test_change_pct_is_an_improvement_when_the_mean_rises_even_from_a_negative_start(
    before: float, after: float, expected: float | None
) -> None:
    # Rewards are logits: a mean going from -2 to -1 is half the distance to 0 gained, +50%.
    assert change_pct(before, after) == expected
