"""The `rlaif-train` and `rlaif-eval` console scripts: check that the [train] extra is installed,
then run `trainer.cli` (whose imports need it)."""

from __future__ import annotations

import os

from shared.extras import require_extra


def quiet_trl() -> None:
    """trl is pinned (pyproject.toml): its PPO lives in trl.experimental in that release, whose import
    warns on every command, `--help` included, that experimental APIs may change. The pin already
    answers that; TRL_EXPERIMENTAL_SILENCE=0 brings the warning back. Set only by our commands, not
    on `import trainer`, so that users' own scripts keep TRL's warnings."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def train() -> None:
    require_extra("rlaif-train", "train")
    quiet_trl()
    from trainer.cli import main

    main()


def evaluate() -> None:
    require_extra("rlaif-eval", "train")
    quiet_trl()
    from trainer.cli import main_eval

    main_eval()
