"""TensorBoard after `--resume`: one folder, each step once.

transformers' `TensorBoardCallback` writes every run to a new `runs/<time>_<host>` folder, so a
resumed run showed the steps that the interrupted run had logged after its checkpoint twice, in two
folders. On resume the writer goes to the interrupted run's folder instead, opened with
TensorBoard's own `purge_step` (the first step the resumed run logs): TensorBoard then hides the
events of that step and later that the interrupted run had written, and shows the continued run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers.integrations import TensorBoardCallback

EVENT_FILES = "events.out.tfevents.*"


def latest_event_folder(runs: Path) -> Path | None:
    """The folder under `runs` whose event file was written last (the interrupted run's)."""
    files = sorted(runs.glob(f"*/{EVENT_FILES}"), key=lambda p: p.stat().st_mtime)
    return files[-1].parent if files else None


def continue_tensorboard(trainer: Any, resumed_step: int) -> None:
    """Point the trainer's TensorBoard logging at the interrupted run's folder, from `resumed_step`
    on. Nothing to do without TensorBoard (`--report_to none`) or on processes that do not log."""
    current = next(
        (cb for cb in trainer.callback_handler.callbacks if isinstance(cb, TensorBoardCallback)), None
    )
    if current is None or not trainer.accelerator.is_main_process:
        return
    folder = (
        Path(current.logging_dir)
        if current.logging_dir  # TENSORBOARD_LOGGING_DIR
        else latest_event_folder(Path(trainer.args.output_dir) / "runs")
    )
    if folder is None:  # the interrupted run logged nothing to TensorBoard: a new folder is fine
        return
    from torch.utils.tensorboard import SummaryWriter

    trainer.remove_callback(current)
    writer = SummaryWriter(log_dir=str(folder), purge_step=resumed_step + 1)
    trainer.add_callback(TensorBoardCallback(tb_writer=writer))
