"""Where a run writes, and whether it continues an earlier one.

Trainers started with the same flags (`docker compose up --scale trainer=3`) cannot be told apart by
their flags, and a container's hostname changes when it is recreated. `--numbered_output_dir`
gives each trainer `<output_dir>-1`, `-2`, ...: the lowest number whose lock file no running
trainer holds. The lock is an `flock` held for the life of the process, so it is released even when
the process is killed, and a recreated trainer takes a folder back, with its checkpoints, for
`--auto_resume` to continue.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from pathlib import Path
from typing import Any

from trainer.checkpoints import newest_complete

LOCK_FILE = ".trainer.lock"
FINISHED_FILE = "run_finished.json"
MAX_NUMBERED_DIRS = 1000
_held_locks: list[int] = []  # open descriptors: closing one would release its folder


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked; the message says what to change."""


def claim_numbered_dir(base: str | Path) -> Path:
    """Create (if needed) and lock the lowest-numbered `<base>-N` folder no running trainer holds."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RunDirError(
            "--numbered_output_dir needs one process per trainer; with several processes "
            "(accelerate launch, torchrun) pass a fixed --output_dir"
        )
    base = Path(base)
    for number in range(1, MAX_NUMBERED_DIRS + 1):
        folder = base.with_name(f"{base.name}-{number}")
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            continue
        _held_locks.append(descriptor)
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        return folder
    raise RunDirError(f"every folder {base.name}-1 to -{MAX_NUMBERED_DIRS} is held by a running trainer")


def release_claimed_dirs() -> None:
    """Let other trainers take the folders this process claimed (its run is over)."""
    while _held_locks:
        os.close(_held_locks.pop())


def last_checkpoint(output_dir: str | Path, value_model: bool = False) -> Path | None:
    """The newest complete checkpoint (with `value_model/` for PPO); newer incomplete ones are skipped
    with a warning (see trainer.checkpoints)."""
    return newest_complete(output_dir, value_model)


def mark_finished(output_dir: str | Path, global_step: int) -> None:
    """Written once training and the final save are done (before the evaluation)."""
    (Path(output_dir) / FINISHED_FILE).write_text(json.dumps({"global_step": global_step}))


def finished_run(output_dir: str | Path) -> dict[str, Any] | None:
    marker = Path(output_dir) / FINISHED_FILE
    return json.loads(marker.read_text()) if marker.exists() else None
