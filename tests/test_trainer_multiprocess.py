"""Scale-out as users run it: two training processes (CPU, gloo, launched by torchrun as
`accelerate launch --multi_gpu` does) train, checkpoint, save a loadable model, evaluate once, and
resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from safetensors import safe_open  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import free_port, serving  # noqa: E402
from harness.service import service_settings  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from reward_service.app import create_app  # noqa: E402
from trainer.train import TRAIN_LOG, VALUE_MODEL_DIR  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
PER_PROCESS_BATCH = 8
EVAL_SAMPLES = 4


def launch_two(
    url: str, policy: Path, data: Path, out: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        "-m", "trainer", "--config", str(ROOT / "configs" / "demo.yaml"),
        "--model_name_or_path", str(policy), "--dataset_name", str(data), "--reward_url", url,
        "--output_dir", str(out), "--per_device_train_batch_size", str(PER_PROCESS_BATCH),
        "--num_ppo_epochs", "1", "--response_length", "8", "--save_steps", "1",
        "--eval_samples", str(EVAL_SAMPLES), "--report_to", "none", *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRL_EXPERIMENTAL_SILENCE": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_processes_train_checkpoint_save_evaluate_once_and_resume(
    tmp_path: Path, tiny_roberta: Path
) -> None:
    policy = build_tiny_policy(tmp_path / "policy")
    data = write_hh_jsonl(tmp_path / "hh.jsonl", n=80)
    out = tmp_path / "run"
    two_steps = str(2 * 2 * PER_PROCESS_BATCH)  # 2 steps of 2 processes x 8 episodes
    with serving(create_app(service_settings(tiny_roberta))) as server:
        first = launch_two(server.url, policy, data, out, "--total_episodes", two_steps)
        assert first.returncode == 0, first.stderr[-4000:]
        log = json.loads((out / TRAIN_LOG).read_text())
        # Two processes: each step covers both processes' episodes, one reward call each.
        assert [(e["step"], e["episode"]) for e in log if "reward/mean" in e] == [(1, 16), (2, 32)]
        checkpoint = out / "checkpoint-2"
        for name in ("model.safetensors", "optimizer.pt", "scheduler.pt", "trainer_state.json"):
            assert (checkpoint / name).exists(), name
        assert (checkpoint / VALUE_MODEL_DIR / "model.safetensors").exists()
        # The final model is the unwrapped policy: plain names, loadable as it is.
        with safe_open(out / "model.safetensors", "pt") as weights:
            assert not any(key.startswith(("module.", "policy.")) for key in weights.keys())  # noqa: SIM118
        AutoModelForCausalLM.from_pretrained(out)
        # The evaluation ran once, on the main process.
        assert len((out / "responses.jsonl").read_text().splitlines()) == EVAL_SAMPLES
        assert json.loads((out / "report.json").read_text())["n"] == EVAL_SAMPLES

        resumed = launch_two(
            server.url, policy, data, out, "--total_episodes", str(2 * int(two_steps)), "--resume", "true"
        )
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    log = json.loads((out / TRAIN_LOG).read_text())
    assert [e["step"] for e in log if "reward/mean" in e] == [1, 2, 3, 4]
    assert (out / "checkpoint-4" / VALUE_MODEL_DIR).is_dir()
