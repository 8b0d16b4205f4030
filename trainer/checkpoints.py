"""Checkpoints that are whole or not used: which `checkpoint-*` folders hold everything a resume
reads, and a full disk while saving turned into a clean stop that names what to free.

A save cut short (a full disk, a kill) leaves a folder with some of the files. Resuming from it
would crash or, worse, load half a model; so a resume takes the newest *complete* checkpoint and
says which ones it skipped, and a save that fails for lack of space removes its partial folder.
"""

from __future__ import annotations

import errno
import json
import logging
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError, safe_open
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)
_warned: set[Path] = set()

VALUE_MODEL_DIR = "value_model"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
RESUME_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# torch.save reports a full disk as a RuntimeError without an errno, safetensors (the weights) as its
# own SafetensorError ("I/O error: No space left on device (os error 28)"), a plain Exception.
DISK_FULL_TEXT = ("no space left", "file write failed", "disk quota", "os error 28", "os error 122")
SAVE_ERRORS = (OSError, RuntimeError, SafetensorError)


class DiskFull(RuntimeError):
    """A save ran out of space; `folder` is what was being written."""

    def __init__(self, folder: Path, cause: BaseException) -> None:
        self.folder = folder
        super().__init__(f"{folder}: {cause}")


def is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
        return True
    return isinstance(exc, SAVE_ERRORS) and any(t in str(exc).lower() for t in DISK_FULL_TEXT)


@contextmanager
def saving(folder: Path) -> Iterator[None]:
    """Raise DiskFull (naming `folder`) when what is saved inside runs out of space."""
    try:
        yield
    except DiskFull:
        raise
    except SAVE_ERRORS as exc:
        if is_disk_full(exc):
            raise DiskFull(folder, exc) from exc
        raise


def _weights_whole(folder: Path) -> str | None:
    """None when `folder` holds model weights that read back; else what is wrong."""
    present = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not present:
        return "no weights"
    for path in present:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt"):  # checks the header against the file size
                    pass
            except Exception as exc:  # safetensors raises its own error type
                return f"{path.name} is cut short ({exc})"
    return None


def incompleteness(checkpoint: Path, value_model: bool) -> str | None:
    """None when `checkpoint` holds everything a resume reads; else what is missing."""
    missing = [name for name in RESUME_FILES if not (checkpoint / name).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "trainer_state.json is unreadable"
    if problem := _weights_whole(checkpoint):
        return problem
    if value_model and (problem := _weights_whole(checkpoint / VALUE_MODEL_DIR)):
        return f"{VALUE_MODEL_DIR}/: {problem}"
    return None


def checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders, newest (highest N) first."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return []
    found = [
        p for p in folder.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name.split("-")[-1]), reverse=True)


def newest_complete(output_dir: str | Path, value_model: bool) -> Path | None:
    """The newest checkpoint a resume can use; each newer, incomplete one is named in one warning line."""
    for checkpoint in checkpoints(output_dir):
        problem = incompleteness(checkpoint, value_model)
        if problem is None:
            return checkpoint
        if checkpoint not in _warned:  # preflight and the trainer both look
            _warned.add(checkpoint)
            logger.warning(
                "skipping %s: incomplete (%s), a save cut short; using an older one", checkpoint, problem
            )
    return None


def remove_if_incomplete(folder: Path, value_model: bool) -> bool:
    """Remove a checkpoint a failed save left half written (it frees space and cannot be resumed)."""
    if (
        folder.is_dir()
        and folder.name.startswith(PREFIX_CHECKPOINT_DIR)
        and incompleteness(folder, value_model)
    ):
        shutil.rmtree(folder, ignore_errors=True)
        return True
    return False
