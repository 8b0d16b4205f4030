"""PPO settings that train the tiny stand-in policy quickly on CPU, for tests that build a trainer
in-process (`trainer.train.build_trainer`) rather than through `rlaif-train`."""

from __future__ import annotations

from pathlib import Path

from trl.experimental.ppo import PPOConfig


def tiny_ppo_config(output_dir: Path, steps: int, batch: int = 16, **overrides: object) -> PPOConfig:
    """`steps` PPO steps of `batch` episodes each, the settings of configs/demo.yaml; `overrides`
    replace any of them."""
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
