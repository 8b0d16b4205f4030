"""README's own-TRL-script GRPO block runs as written on this CPU machine, against local stand-ins:
the block is read from README.md and only the hub names (model, dataset) and the service's address
are swapped for local ones, plus a one-step budget. If README's block changes shape, a swap no longer
matches and this test says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("trl")

from datasets import Dataset  # noqa: E402

from harness.fake_bedrock import FakeBedrock  # noqa: E402
from harness.live_server import serving  # noqa: E402
from harness.service import service_settings  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from reward_service.app import create_app  # noqa: E402

README = Path(__file__).parents[1] / "README.md"


def readme_grpo_block() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    matching = [block for block in blocks if "GRPOTrainer(" in block and "RemoteReward(" in block]
    assert len(matching) == 1, "README should hold one GRPO script with RemoteReward"
    return matching[0]


def swap(code: str, old: str, new: str) -> str:
    assert old in code, f"README's GRPO block no longer contains {old!r}"
    return code.replace(old, new)


def test_readme_grpo_script_runs_on_cpu(
    tmp_path: Path, tiny_roberta: Path, fake_bedrock: FakeBedrock, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = build_tiny_policy(tmp_path / "policy")
    dataset = Dataset.from_dict({"prompt": [f"Summarise post {i}:" for i in range(8)]})
    settings = service_settings(
        tiny_roberta, scorers=["roberta-hate", "claude-bedrock"], bedrock_endpoint_url=fake_bedrock.url
    )
    monkeypatch.chdir(tmp_path)
    with serving(create_app(settings)) as server:
        code = readme_grpo_block()
        code = swap(code, '"Qwen/Qwen2.5-0.5B-Instruct"', repr(str(policy)))
        code = swap(code, 'load_dataset("trl-lib/tldr", split="train")', "STAND_IN_DATASET")
        code = swap(code, "http://gpu-box:8000", server.url)
        code = swap(
            code,
            "num_generations=4,",
            "num_generations=4, max_steps=1, per_device_train_batch_size=4, max_completion_length=8, "
            "report_to=[], save_strategy='no',",
        )
        namespace = {"STAND_IN_DATASET": dataset, "__name__": "readme"}
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["trainer"].state.global_step == 1
