"""LoRA: reference = the adapter-disabled policy (no copy); the adapter is saved; `rlaif-eval` reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("peft")

from peft import PeftModel  # noqa: E402
from trl import ModelConfig  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import LiveServer  # noqa: E402
from harness.tiny_ppo import tiny_ppo_config  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from trainer.cli import eval_main  # noqa: E402
from trainer.config import RLAIFArguments  # noqa: E402
from trainer.train import build_trainer, run_training  # noqa: E402


@pytest.mark.slow
def test_lora_training_and_eval_cli(
    tmp_path: Path, live_service: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = build_tiny_policy(tmp_path / "policy")
    data = write_hh_jsonl(tmp_path / "hh.jsonl", n=100)
    out = tmp_path / "run"
    lora = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_target_modules": ["c_attn", "c_fc"]}
    script_args = RLAIFArguments(dataset_name=str(data), reward_url=live_service.url, skip_eval=True)
    trainer, _, _ = build_trainer(
        script_args,
        tiny_ppo_config(out, steps=2, batch=4),
        ModelConfig(model_name_or_path=str(policy), lora_task_type="CAUSAL_LM", **lora),
    )
    assert trainer.ref_model is None and isinstance(trainer.model.policy, PeftModel)
    run_training(trainer)
    assert (out / "adapter_config.json").exists()
    # The console shows one short line per step, not TRL's metric dicts.
    printed = capsys.readouterr().out
    assert "step 1/2  reward " in printed and "step 2/2  reward " in printed
    assert "objective/" not in printed

    code = eval_main(
        [
            "--model_name_or_path", str(policy), "--dataset_name", str(data), "--output_dir", str(out),
            "--reward_url", live_service.url, "--eval_samples", "8", "--response_length", "8",
            "--use_cpu", "true", "--bf16", "false",
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["n"] == 8 and report["score_on"] == "query_response"
    # It names what it evaluated, and no training setting it cannot know (its flags' defaults).
    run = report["run"]
    assert str(out) in run["evaluated"] and "LoRA adapter on" in run["evaluated"]
    assert run["original"] == str(policy) and run["dataset"] == str(data) and run["trained_steps"] == 2
    assert "learning_rate" not in run and "steps" not in run
    # The console's last lines: the change with its interval and n, then the caveats.
    tail = capsys.readouterr().out.strip().splitlines()[-4:]
    assert any("95% CI" in line and "n=8" in line for line in tail)
    assert any(line.startswith("warning: only 8 held-out prompts") for line in tail)
    assert len((out / "responses.jsonl").read_text().splitlines()) == 8
