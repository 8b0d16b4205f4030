"""The `rlaif-train` and `rlaif-eval` console scripts: check that the [train] extra is installed,
then run `trainer.cli` (whose imports need it)."""

from __future__ import annotations

from shared.extras import require_extra


def train() -> None:
    require_extra("rlaif-train", "train")
    from trainer.cli import main

    main()


def evaluate() -> None:
    require_extra("rlaif-eval", "train")
    from trainer.cli import main_eval

    main_eval()
