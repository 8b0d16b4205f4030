"""Two trainer processes against one reward service process: both finish, the service merged them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytest.importorskip("trl")

from demo.hh_data import write_hh_jsonl  # noqa: E402
from demo.run import start_service, stop, wait_ready  # noqa: E402
from harness.live_server import free_port  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STEPS = 6
BATCH = 8


def _metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def _trainer(policy: Path, data: Path, url: str, out: Path, seed: int) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "trainer",
        "--model_name_or_path", str(policy), "--dataset_name", str(data), "--output_dir", str(out),
        "--reward_url", url, "--score_on", "response", "--skip_eval", "true", "--seed", str(seed),
        "--per_device_train_batch_size", str(BATCH), "--total_episodes", str(BATCH * STEPS),
        "--response_length", "8", "--num_sample_generations", "0", "--save_strategy", "no",
        "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
        "--report_to", "none", "--disable_tqdm", "true",
    ]  # fmt: skip
    # One thread each: two trainers and the service share the machine's cores.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.slow
def test_two_trainers_share_one_service(tmp_path: Path, tiny_roberta: Path, monkeypatch) -> None:
    policy = build_tiny_policy(tmp_path / "policy")
    data = write_hh_jsonl(tmp_path / "hh.jsonl", n=120)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # A long batching window so that requests of the two trainers that arrive close together share
    # a model batch, which /metrics then shows as batches larger than one trainer's request. A batch
    # holds both trainers' requests at most, and a full batch does not wait out the window.
    monkeypatch.setenv("REWARD_MAX_WAIT_MS", "3000")
    monkeypatch.setenv("REWARD_MAX_BATCH_ITEMS", str(2 * BATCH))
    service = start_service(tiny_roberta, port, tmp_path / "service.log")
    try:
        wait_ready(url, service)
        runs = [_trainer(policy, data, url, tmp_path / f"run{i}", seed=i) for i in range(2)]
        outputs = [run.communicate(timeout=400)[0] for run in runs]
        for run, output in zip(runs, outputs, strict=True):
            assert run.returncode == 0, output[-3000:]
        metrics = httpx.get(url + "/metrics", timeout=10).text
    finally:
        stop(service)
    for i in range(2):
        assert (tmp_path / f"run{i}" / "model.safetensors").exists()
    scorer = "roberta-hate"
    # Every rollout batch of both trainers was one /score request, and every item was scored.
    assert _metric(metrics, "reward_requests_total", route="/score", status="200") == 2 * STEPS
    assert _metric(metrics, "reward_items_total", scorer=scorer) == 2 * STEPS * BATCH
    batches = _metric(metrics, "reward_batch_size_count", scorer=scorer)
    single = _metric(metrics, "reward_batch_size_bucket", scorer=scorer, le=f"{float(BATCH)}")
    assert batches < 2 * STEPS and batches - single >= 1, "no model batch mixed the two trainers' requests"
