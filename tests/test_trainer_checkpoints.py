"""Checkpoints are whole or not used: a resume skips a checkpoint a save left half written (with a
warning), and a full disk while saving stops the run cleanly, losing only the checkpoint being
written."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("trl")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import LiveServer  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from trainer import checkpoints  # noqa: E402
from trainer.checkpoints import VALUE_MODEL_DIR, DiskFull, incompleteness, is_disk_full, saving  # noqa: E402
from trainer.cli import EXIT_DISK_FULL, train_main  # noqa: E402
from trainer.run_dir import last_checkpoint  # noqa: E402


def _whole(folder: Path, value_model: bool = True) -> Path:
    """A checkpoint folder with every file a resume reads (tiny tensors)."""
    folder.mkdir(parents=True)
    save_file({"w": torch.zeros(4)}, str(folder / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt"):
        torch.save({}, folder / name)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": int(folder.name.split("-")[1])}))
    if value_model:
        (folder / VALUE_MODEL_DIR).mkdir()
        save_file({"w": torch.zeros(4)}, str(folder / VALUE_MODEL_DIR / "model.safetensors"))
    return folder


def test_resume_takes_the_newest_complete_checkpoint_and_names_the_ones_it_skips(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    checkpoints._warned.clear()
    _whole(tmp_path / "checkpoint-2")
    _whole(tmp_path / "checkpoint-10")  # numbered, not sorted as text
    no_state = _whole(tmp_path / "checkpoint-12")
    (no_state / "trainer_state.json").unlink()  # killed before TRL's last file
    no_critic = _whole(tmp_path / "checkpoint-14", value_model=False)  # killed before value_model/
    cut = _whole(tmp_path / "checkpoint-16")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) - 8])  # the disk filled mid-file
    (tmp_path / "checkpoint-18").mkdir()  # only started

    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(tmp_path, value_model=True) == tmp_path / "checkpoint-10"
    skipped = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skipped) == 4 and all("incomplete" in line for line in skipped)
    assert "trainer_state.json" in incompleteness(no_state, True)
    assert VALUE_MODEL_DIR in incompleteness(no_critic, True)
    assert "cut short" in incompleteness(cut, True)
    # GRPO/RLOO checkpoints have no critic: checkpoint-14 is whole for them.
    assert last_checkpoint(tmp_path, value_model=False) == no_critic
    assert last_checkpoint(tmp_path / "none", value_model=True) is None


def test_disk_full_is_recognised_in_the_forms_torch_and_python_raise() -> None:
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    torch_message = "PytorchStreamWriter failed writing file data/0: file write failed"
    assert is_disk_full(RuntimeError(f"[enforce fail at inline_container.cc:664] . {torch_message}"))
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(RuntimeError("CUDA out of memory"))


def test_safetensors_running_out_of_space_is_a_full_disk_too(tmp_path: Path) -> None:
    """The weights are written by safetensors, whose error on a full disk is its own SafetensorError
    (a plain Exception): on a real 64 KiB tmpfs where this process may mount one (root), else on
    the error text safetensors gives."""
    small = tmp_path / "small"
    small.mkdir()
    mounted = (
        os.geteuid() == 0
        and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)]).returncode == 0
    )
    try:
        with pytest.raises(DiskFull) as stopped, saving(small / "checkpoint-2"):
            if mounted:
                save_file({"w": torch.zeros(100_000)}, str(small / "model.safetensors"))
            else:
                from safetensors import SafetensorError

                raise SafetensorError(
                    "Error while serializing: I/O error: No space left on device (os error 28)"
                )
    finally:
        if mounted:
            subprocess.run(["umount", str(small)], check=True)
    assert stopped.value.folder == small / "checkpoint-2"
    assert "No space left on device" in str(stopped.value)


@pytest.mark.slow
def test_a_full_disk_while_saving_stops_cleanly_and_keeps_the_last_whole_checkpoint(
    live_service: LiveServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    policy = build_tiny_policy(tmp_path / "policy")
    data = write_hh_jsonl(tmp_path / "hh.jsonl", n=60)
    out = tmp_path / "run"
    real_save = torch.save

    def full_at_checkpoint_4(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if "checkpoint-4" in str(f):  # the value model and policy are written; the optimizer is not
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_at_checkpoint_4)
    code = train_main(
        [
            "--model_name_or_path", str(policy), "--dataset_name", str(data),
            "--output_dir", str(out), "--reward_url", live_service.url, "--score_on", "response",
            "--per_device_train_batch_size", "4", "--total_episodes", "24", "--response_length", "4",
            "--save_strategy", "steps", "--save_steps", "2", "--skip_eval", "true",
            "--use_cpu", "true", "--bf16", "false", "--gradient_checkpointing", "false",
            "--report_to", "none", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == EXIT_DISK_FULL, err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith("error: training stopped at step 4: the disk is full")
    assert "partial checkpoint-4 was removed" in last and str(out / "checkpoint-2") in last
    assert "--save_total_limit" in last and "MiB free now" in last
    # At most the checkpoint being written is lost: checkpoint-2 is whole and resumable.
    assert not (out / "checkpoint-4").exists()
    assert incompleteness(out / "checkpoint-2", value_model=True) is None
