"""Stable run folders for trainers started with the same flags (docker compose --scale), and
--auto_resume: a restarted trainer takes its folder back and continues; a finished run is not redone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import LiveServer  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from trainer.cli import EXIT_CONFIGURATION, train_main  # noqa: E402
from trainer.run_dir import FINISHED_FILE, RunDirError, claim_numbered_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLAIM = (
    "import sys; from trainer.run_dir import claim_numbered_dir; "
    "print(claim_numbered_dir(sys.argv[1]), flush=True); sys.stdin.read()"
)


def _claiming_trainer(base: Path) -> tuple[subprocess.Popen[str], str]:
    """A process that claims a folder and holds it until killed (as a running trainer does)."""
    process = subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(base)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    return process, process.stdout.readline().strip()


def test_each_running_trainer_gets_its_own_folder_and_a_restart_takes_one_back(tmp_path: Path) -> None:
    base = tmp_path / "outputs" / "trainer"
    first, first_dir = _claiming_trainer(base)
    second, second_dir = _claiming_trainer(base)
    try:
        assert (first_dir, second_dir) == (str(base) + "-1", str(base) + "-2")
        first.kill()  # SIGKILL: no clean-up runs, the kernel still drops the lock
        first.wait()
        restarted, restarted_dir = _claiming_trainer(base)
        restarted.kill()
        restarted.wait()
        assert restarted_dir == first_dir
    finally:
        for process in (first, second):
            process.kill()
            process.wait()


def test_numbered_folders_refuse_several_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunDirError, match="pass a fixed --output_dir"):
        claim_numbered_dir(tmp_path / "run")


@pytest.mark.slow
def test_auto_resume_continues_a_stopped_run_and_never_repeats_a_finished_one(
    tmp_path: Path, live_service: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = build_tiny_policy(tmp_path / "policy")
    data = write_hh_jsonl(tmp_path / "hh.jsonl", n=60)

    def train(episodes: int, *extra: str) -> int:
        return train_main(
            [
                "--model_name_or_path", str(policy), "--dataset_name", str(data),
                "--output_dir", str(tmp_path / "runs" / "exp"), "--numbered_output_dir", "true",
                "--auto_resume", "true", "--reward_url", live_service.url, "--score_on", "response",
                "--per_device_train_batch_size", "4", "--total_episodes", str(episodes),
                "--response_length", "4", "--num_sample_generations", "0", "--save_steps", "1",
                "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
                "--report_to", "none", "--skip_eval", "true", "--disable_tqdm", "true", *extra,
            ]
        )  # fmt: skip

    run_dir = tmp_path / "runs" / "exp-1"
    assert train(8) == 0  # 2 steps, fresh: nothing to resume yet
    assert (run_dir / "checkpoint-2").is_dir() and (run_dir / FINISHED_FILE).exists()

    capsys.readouterr()
    assert train(8) == 0  # the container came back after the run finished
    assert "finished at step 2: nothing to do" in capsys.readouterr().out

    # A run stopped after its step-2 checkpoint (no finished marker) continues to the end.
    (run_dir / FINISHED_FILE).unlink()
    assert train(12) == 0
    steps = [entry["step"] for entry in json.loads((run_dir / "train_log.json").read_text())]
    assert steps == [1, 2, 3]
    assert json.loads((run_dir / FINISHED_FILE).read_text())["global_step"] == 3


def test_resume_without_a_checkpoint_stops_before_loading(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = train_main(
        ["--model_name_or_path", "unused", "--output_dir", str(tmp_path / "empty"), "--resume", "true"]
    )
    assert code == EXIT_CONFIGURATION
    assert "--resume: no checkpoint-* folder" in capsys.readouterr().err
