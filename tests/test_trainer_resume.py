"""The reward service goes down mid-run: clear error and a checkpoint, then --resume finishes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402
from trl import ModelConfig  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import LiveServer, free_port  # noqa: E402
from harness.service import service_settings  # noqa: E402
from harness.tiny_ppo import tiny_ppo_config  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from reward_service.app import create_app  # noqa: E402
from shared.client import RewardClient  # noqa: E402
from shared.reward_function import RemoteReward, as_text  # noqa: E402
from trainer.cli import EXIT_CONFIGURATION, train_main  # noqa: E402
from trainer.config import RLAIFArguments, parse_args  # noqa: E402
from trainer.group_train import build_group_trainer  # noqa: E402
from trainer.reward_bridge import RemoteRewardModel  # noqa: E402
from trainer.train import VALUE_MODEL_DIR, TrainingInterrupted, build_trainer, run_training  # noqa: E402

STOP_AT = 3
STEPS = 6


class StopServiceAfter(TrainerCallback):
    """Takes the reward service down once `step` PPO steps are done."""

    def __init__(self, server: LiveServer, step: int) -> None:
        self.server, self.step = server, step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            self.server.stop()


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("resume")
    return build_tiny_policy(root / "policy"), write_hh_jsonl(root / "hh.jsonl", n=120)


def _args(data: Path, url: str, **overrides: Any) -> RLAIFArguments:
    return RLAIFArguments(
        dataset_name=str(data),
        reward_url=url,
        score_on="response",
        reward_max_wait_s=3.0,
        reward_max_attempts=3,
        skip_eval=True,
        **overrides,
    )


@pytest.mark.slow
def test_service_down_mid_run_then_resume(
    tmp_path: Path, tiny_roberta: Path, live_service: LiveServer, stand_ins
) -> None:
    policy, data = stand_ins
    out = tmp_path / "run"
    model_config = ModelConfig(model_name_or_path=str(policy))
    ppo = dict(batch=8, save_strategy="steps", save_steps=2)

    first = LiveServer(create_app(service_settings(tiny_roberta))).start()
    trainer, _, _ = build_trainer(_args(data, first.url), tiny_ppo_config(out, STEPS, **ppo), model_config)
    trainer.add_callback(StopServiceAfter(first, STOP_AT))
    with pytest.raises(TrainingInterrupted) as caught:
        run_training(trainer)
    message = str(caught.value)
    assert f"stopped at step {STOP_AT}" in message and "--resume" in message
    assert "reward service did not answer" in message  # the client's own reason is kept
    checkpoint = caught.value.checkpoint
    assert checkpoint == out / f"checkpoint-{STOP_AT}"
    for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
        assert (checkpoint / name).exists(), name
    assert (checkpoint / VALUE_MODEL_DIR / "model.safetensors").exists()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    # No step ran on missing rewards: exactly STOP_AT steps were logged, each with service scores.
    assert state["global_step"] == STOP_AT
    assert len([e for e in state["log_history"] if "reward/mean" in e]) == STOP_AT

    # The resumed run and the uninterrupted one are scored by the run's shared service (the same
    # model as the one stopped): only the first service's state is changed by this test.
    resumed, point, _ = build_trainer(
        _args(data, live_service.url, resume=True), tiny_ppo_config(out, STEPS, **ppo), model_config
    )
    assert point is not None and point.checkpoint == checkpoint and point.global_step == STOP_AT
    assert resumed.lr_scheduler.state_dict()["last_epoch"] == STOP_AT
    assert len(resumed.optimizer.state_dict()["state"]) > 0  # Adam moments came back
    result = run_training(resumed)
    assert result.global_step == STEPS
    steps = [e["step"] for e in result.log_history if "reward/mean" in e]
    assert steps == list(range(1, STEPS + 1))
    assert (out / "model.safetensors").exists()
    # The steps after the outage are those of a run the outage never hit: the checkpoint holds the
    # RNG state of the step's end, not that of the unfinished step's sampling.
    whole = build_trainer(
        _args(data, live_service.url), tiny_ppo_config(tmp_path / "whole", STEPS, **ppo), model_config
    )[0]
    uninterrupted = run_training(whole).log_history
    expected, got = _steps(uninterrupted, STOP_AT + 1), _steps(result.log_history, STOP_AT + 1)
    assert [e["episode"] for e in got] == [8 * step for step in range(STOP_AT + 1, STEPS + 1)]
    for want, have in zip(expected, got, strict=True):
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (want["step"], key)


def test_cli_stops_before_loading_anything_when_the_service_is_down(
    tmp_path: Path, stand_ins, capsys: pytest.CaptureFixture[str]
) -> None:
    policy, data = stand_ins
    out = tmp_path / "run"
    code = train_main(
        [
            "--model_name_or_path", str(policy),
            "--dataset_name", str(data),
            "--output_dir", str(out),
            "--reward_url", f"http://127.0.0.1:{free_port()}",
            "--reward_max_wait_s", "1", "--reward_max_attempts", "2",
            "--score_on", "response",
            "--per_device_train_batch_size", "4", "--total_episodes", "8",
            "--response_length", "4", "--num_sample_generations", "0",
            "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
            "--report_to", "none",
        ]
    )  # fmt: skip
    assert code == EXIT_CONFIGURATION
    err = capsys.readouterr().err
    assert "not reachable" in err and "--reward_url" in err and "Traceback" not in err
    # Nothing trained, so nothing saved and no --resume offered.
    assert not out.exists() and "--resume" not in err


# Time-dependent figures; everything else a step logs must match.
CLOCK_KEYS = {"eps", "reward/call_latency_s"}


def _steps(log_history: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in entry.items() if k not in CLOCK_KEYS}
        for entry in log_history
        if "reward/mean" in entry and entry["step"] >= first
    ]


@pytest.mark.slow
def test_an_interrupted_run_resumes_exactly_where_the_uninterrupted_one_went(
    tmp_path: Path, live_service: LiveServer, stand_ins, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Data order (across an epoch boundary), sampling RNG, episode count: steps 4-6 after a resume
    at step 3 are the uninterrupted run's steps 4-6. Each reward is its own response's score."""
    policy, data = stand_ins
    scored = record_ppo_rewards(monkeypatch)
    model_config = ModelConfig(model_name_or_path=str(policy))
    # 8 prompts in batches of 4: 2 steps per epoch, so the resume (at 3) is mid-epoch and crosses one.
    args = dict(max_train_samples=8)
    ppo = dict(batch=4, save_strategy="steps", save_steps=3, response_length=8, report_to=["tensorboard"])
    whole = tmp_path / "whole"
    trainer, _, _ = build_trainer(
        _args(data, live_service.url, **args), tiny_ppo_config(whole, 6, **ppo), model_config
    )
    uninterrupted = run_training(trainer).log_history
    assert len(scored) == 6 * 4
    assert_rewards_belong_to_their_completions(live_service.url, scored)

    resumed_dir = killed_after(whole, 3, tmp_path / "resumed")
    trainer, _, _ = build_trainer(
        _args(data, live_service.url, resume=True, **args),
        tiny_ppo_config(resumed_dir, 6, **ppo),
        model_config,
    )
    resumed = run_training(trainer).log_history

    expected, got = _steps(uninterrupted, 4), _steps(resumed, 4)
    assert [e["step"] for e in got] == [4, 5, 6] and [e["episode"] for e in got] == [16, 20, 24]
    for want, have in zip(expected, got, strict=True):
        assert have.keys() == want.keys()
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (want["step"], key)
    assert _steps(resumed, 1)[:3] == _steps(uninterrupted, 1)[:3]  # the history before, kept
    # TensorBoard shows each step once, in the interrupted run's folder.
    assert tensorboard_steps(resumed_dir / "runs", "train/reward/mean") == [1, 2, 3, 4, 5, 6]


def killed_after(whole: Path, step: int, out: Path) -> Path:
    """`out` as a run killed just after step `step` would leave it: that checkpoint, and the
    TensorBoard events of every step the whole run logged (the later ones too, written before the
    kill)."""
    out.mkdir()
    shutil.copytree(whole / f"checkpoint-{step}", out / f"checkpoint-{step}")
    shutil.copytree(whole / "runs", out / "runs")
    return out


def tensorboard_steps(runs: Path, tag: str) -> list[int]:
    """The steps of `tag` TensorBoard shows over every run folder under `runs` (duplicates kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    steps = []
    for folder in sorted({p.parent for p in runs.glob("*/events.out.tfevents.*")}):
        events = EventAccumulator(str(folder))
        events.Reload()
        if tag in events.Tags()["scalars"]:
            steps.extend(e.step for e in events.Scalars(tag))
    return sorted(steps)


def _group_run(algorithm: str, data: Path, policy: Path, out: Path, url: str, *extra: str):
    """GRPO/RLOO trainer for 4 steps of 2 prompts x 2 completions, a checkpoint every 2 steps."""
    script_args, config, model_config = parse_args(
        [
            "--algorithm", algorithm, "--model_name_or_path", str(policy), "--dataset_name", str(data),
            "--output_dir", str(out), "--reward_url", url, "--score_on", "response",
            "--max_train_samples", "6", "--skip_eval", "true", "--per_device_train_batch_size", "4",
            "--num_generations", "2", "--max_completion_length", "6", "--max_steps", "4",
            "--save_strategy", "steps", "--save_steps", "2", "--report_to", "tensorboard",
            "--disable_tqdm", "true", "--use_cpu", "true", "--bf16", "false", "--seed", "0", *extra,
        ]
    )  # fmt: skip
    trainer, _, resume_from = build_group_trainer(script_args, config, model_config)
    return trainer, resume_from


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_an_interrupted_group_run_resumes_exactly_where_the_uninterrupted_one_went(
    algorithm: str, tmp_path: Path, live_service: LiveServer, stand_ins, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRPO/RLOO through the transformers Trainer's own resume: steps 3-4 after a resume at step 2
    are the uninterrupted run's (6 prompts in batches of 2: the resume crosses an epoch), and
    TensorBoard does not show steps 3-4 twice. Each reward is its own completion's score."""
    policy, data = stand_ins
    scored = record_group_rewards(monkeypatch)
    whole = tmp_path / "whole"
    trainer, _ = _group_run(algorithm, data, policy, whole, live_service.url)
    uninterrupted = run_training(trainer).log_history
    assert len(scored) == 4 * 4
    assert_rewards_belong_to_their_completions(live_service.url, scored)

    resumed_dir = killed_after(whole, 2, tmp_path / "resumed")
    trainer, resume_from = _group_run(
        algorithm, data, policy, resumed_dir, live_service.url, "--resume", "true"
    )
    assert resume_from == resumed_dir / "checkpoint-2"
    resumed = run_training(trainer, resume_from).log_history

    expected, got = _group_steps(uninterrupted, 3), _group_steps(resumed, 3)
    assert [e["step"] for e in got] == [3, 4]
    for want, have in zip(expected, got, strict=True):
        assert have.keys() == want.keys()
        for key, value in want.items():
            assert have[key] == pytest.approx(value, rel=1e-5, abs=1e-6), (want["step"], key)
    assert _group_steps(resumed, 1)[:2] == _group_steps(uninterrupted, 1)[:2]  # the history before, kept
    assert tensorboard_steps(resumed_dir / "runs", "train/reward") == [1, 2, 3, 4]


GROUP_CLOCK_KEYS = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


def _group_steps(log_history: list[dict[str, Any]], first: int) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in entry.items() if k not in GROUP_CLOCK_KEYS and not k.startswith("profiling/")}
        for entry in log_history
        if "reward/mean" in entry and entry["step"] >= first
    ]


def record_ppo_rewards(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float]]:
    """(query, response, reward) of every row the PPO bridge scores, in the order TRL gets them."""
    scored: list[tuple[str, str, float]] = []
    score_rows = RemoteRewardModel.score_rows

    def recording(self: RemoteRewardModel, query_responses: Any, context_length: int) -> Any:
        rewards = score_rows(self, query_responses, context_length)
        queries, responses = self.decode_rows(query_responses, context_length)
        scored.extend(zip(queries, responses, rewards.tolist(), strict=True))
        return rewards

    monkeypatch.setattr(RemoteRewardModel, "score_rows", recording)
    return scored


def record_group_rewards(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, float]]:
    """(prompt, completion, reward) of every completion GRPO/RLOO's reward function scores."""
    scored: list[tuple[str, str, float]] = []
    score_async = RemoteReward.score_async

    async def recording(self: RemoteReward, prompts: Any, completions: Any, **kwargs: Any) -> list[float]:
        rewards = await score_async(self, prompts, completions, **kwargs)
        scored.extend(zip(map(as_text, prompts), map(as_text, completions), rewards, strict=True))
        return rewards

    monkeypatch.setattr(RemoteReward, "score_async", recording)
    return scored


def assert_rewards_belong_to_their_completions(url: str, scored: list[tuple[str, str, float]]) -> None:
    """Every training reward is the service's score of that very completion: all of them scored
    again in reverse order give the same figures. Rewards shuffled across completions (an async
    call answering for another batch, a reordering anywhere on the way) fail here."""
    queries, responses, rewards = (list(column) for column in zip(*scored, strict=True))
    with RewardClient(url) as client:
        again = client.score(queries=queries[::-1], responses=responses[::-1], score_on="response").scores
    assert again[::-1] == pytest.approx(rewards, abs=1e-4)
    # The check can fail: the random policy's completions do not all get one score.
    assert max(rewards) - min(rewards) > 1e-3
