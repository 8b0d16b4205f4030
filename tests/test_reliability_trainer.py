"""The reward server is killed (SIGKILL) mid-run and restarted: the trainer waits, retries within
its bounded budget, and finishes without training a step on missing rewards."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")

from transformers import TrainerCallback  # noqa: E402
from trl import ModelConfig  # noqa: E402

from demo import run as demo_run  # noqa: E402
from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import free_port  # noqa: E402
from harness.tiny_ppo import tiny_ppo_config  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from trainer.config import RLAIFArguments  # noqa: E402
from trainer.train import build_trainer, run_training  # noqa: E402

KILL_AT = 2
STEPS = 5


class KillAndRestartService(TrainerCallback):
    """After step `step`, SIGKILLs the service and starts a new one on the same port in the background."""

    def __init__(self, holder: dict[str, Any], restart: Any, step: int) -> None:
        self.holder, self.restart, self.step = holder, restart, step
        self.restarter: threading.Thread | None = None

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            process = self.holder["process"]
            process.send_signal(signal.SIGKILL)
            process.wait()
            self.restarter = threading.Thread(target=self.restart)
            self.restarter.start()


@pytest.mark.slow
def test_trainer_survives_a_killed_and_restarted_reward_server(tmp_path: Path, tiny_roberta: Path) -> None:
    policy, data = build_tiny_policy(tmp_path / "policy"), write_hh_jsonl(tmp_path / "hh.jsonl", n=80)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    holder: dict[str, Any] = {}

    def start() -> None:
        process = demo_run.start_service(tiny_roberta, port, tmp_path / f"service-{len(holder)}.log")
        holder["process"] = process
        demo_run.wait_ready(url, process, timeout_s=60)

    start()
    killer = KillAndRestartService(holder, start, KILL_AT)
    try:
        trainer, _, _ = build_trainer(
            # Budget of 60 s: the new server needs a few seconds to load its model.
            RLAIFArguments(
                dataset_name=str(data),
                reward_url=url,
                score_on="response",
                reward_max_wait_s=60.0,
                reward_max_attempts=1000,
                skip_eval=True,
            ),
            tiny_ppo_config(tmp_path / "run", STEPS, batch=8),
            ModelConfig(model_name_or_path=str(policy)),
        )
        trainer.add_callback(killer)
        result = run_training(trainer)
    finally:
        if killer.restarter is not None:
            killer.restarter.join()
        demo_run.stop(holder["process"])
    assert result.global_step == STEPS
    rewarded = [e for e in result.log_history if "reward/mean" in e]
    # Every step was trained on scores from a server: none missing, none made up.
    assert [e["step"] for e in rewarded] == list(range(1, STEPS + 1))
    waited = rewarded[KILL_AT]["reward/call_latency_s"]
    assert waited > 5 * max(e["reward/call_latency_s"] for e in rewarded[:KILL_AT])  # it did wait
    assert waited < 60
    print(
        f"reward call after the kill took {waited:.2f}s; before: {rewarded[0]['reward/call_latency_s']:.3f}s"
    )
