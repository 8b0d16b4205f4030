"""The report's plots speak one vocabulary whatever the algorithm: a "training step" axis and
per-token entropy, from PPO's metric names and from GRPO's / RLOO's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("trl")
pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402

from trainer.evaluate import EvalRow, summarise, write_plots  # noqa: E402

PPO_LOG = [
    {
        "step": s,
        "reward/mean": 0.1 * s,
        "objective/kl": 0.01 * s,
        "policy/entropy_avg": 6.0,
        "objective/entropy": 99.0,
        "response/mean_tokens": 12.0,
    }
    for s in range(1, 5)
]
GROUP_LOG = [
    {"step": s, "reward/mean": 0.1 * s, "kl": 0.01 * s, "entropy": 6.2, "response/mean_tokens": 12.0}
    for s in range(1, 5)
]


@pytest.mark.parametrize("log", [PPO_LOG, GROUP_LOG], ids=["ppo", "grpo-rloo"])
def test_plots_label_training_steps_and_per_token_entropy(
    log: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    drawn: dict[str, list[tuple[str, str, list[float]]]] = {}
    real_savefig = Figure.savefig

    def recording_savefig(fig: Figure, path: Path, **kwargs: Any) -> None:
        drawn[Path(path).name] = [
            (
                ax.get_xlabel(),
                ax.get_title(),
                [float(y) for y in ax.lines[-1].get_ydata()] if ax.lines else [],
            )
            for ax in fig.axes
        ]
        real_savefig(fig, path, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    rows = [EvalRow("q", "b", -1.0, "a", 1.0, 0.9, 0.1)]
    report = summarise(rows, "roberta-hate", "response", {"seed": 1, "max_new_tokens": 4})
    written = write_plots(report, log, tmp_path)
    assert {p.name for p in written} == {
        "reward_per_step.png",
        "training_curves.png",
        "score_distribution.png",
    }
    assert all(p.stat().st_size > 0 for p in written)
    [(xlabel, _, rewards)] = drawn["reward_per_step.png"]
    assert xlabel == "training step" and rewards == pytest.approx([0.1, 0.2, 0.3, 0.4])
    curves = {title: (x, values) for x, title, values in drawn["training_curves.png"]}
    assert set(curves) == {"reward", "KL to the reference", "entropy per token", "response length (tokens)"}
    assert {x for x, _ in curves.values()} == {"training step"}
    # Per token in both: PPO's summed objective/entropy (99) is not what is drawn.
    assert curves["entropy per token"][1][0] == pytest.approx(6.0 if log is PPO_LOG else 6.2)
