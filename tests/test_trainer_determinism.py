"""Same seed, same start: the models PPO trains from do not depend on the run (docs/trainer.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from trl import ModelConfig  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.tiny_ppo import tiny_ppo_config  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from trainer.config import RLAIFArguments  # noqa: E402
from trainer.train import build_trainer, seed_before_loading  # noqa: E402

# Nothing listens here: building a trainer does not call the service.
UNUSED_URL = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("determinism")
    return build_tiny_policy(root / "policy"), write_hh_jsonl(root / "hh.jsonl", n=40)


def _start_weights(stand_ins: tuple[Path, Path], out: Path, seed: int) -> dict[str, torch.Tensor]:
    """Policy and value model as build_trainer hands them to PPO (the value head is new)."""
    policy, data = stand_ins
    args = RLAIFArguments(dataset_name=str(data), reward_url=UNUSED_URL, score_on="response")
    trainer, _, _ = build_trainer(
        args, tiny_ppo_config(out, steps=1, seed=seed), ModelConfig(model_name_or_path=str(policy))
    )
    trainer.reward_model.client.close()
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_gives_the_same_value_head(stand_ins, tmp_path: Path) -> None:
    # TRL's PPOTrainer does not seed before the models load; an unseeded value head made two runs of
    # one seed diverge from the first PPO update.
    first = _start_weights(stand_ins, tmp_path / "a", seed=0)
    torch.manual_seed(12345)  # whatever the RNG did before must not matter
    second = _start_weights(stand_ins, tmp_path / "b", seed=0)
    other_seed = _start_weights(stand_ins, tmp_path / "c", seed=1)

    head = "value_model.score.weight"
    assert head in first
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first[head], other_seed[head])  # the seed, not a constant, sets the head


def test_full_determinism_turns_on_deterministic_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # enable_full_determinism also sets these; let monkeypatch put them back for the other tests.
    for name in ("CUDA_LAUNCH_BLOCKING", "CUBLAS_WORKSPACE_CONFIG", "ASCEND_LAUNCH_BLOCKING"):
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("HCCL_DETERMINISTIC", "")
    monkeypatch.setenv("FLASH_ATTENTION_DETERMINISTIC", "")
    before = torch.are_deterministic_algorithms_enabled()
    try:
        seed_before_loading(tiny_ppo_config(tmp_path, steps=1, full_determinism=False))
        assert not torch.are_deterministic_algorithms_enabled()
        seed_before_loading(tiny_ppo_config(tmp_path, steps=1, full_determinism=True))
        assert torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)
