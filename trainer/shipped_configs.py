"""The YAML configs shipped inside the `trainer` package, so that an installed `rlaif-train` finds
them by name (`--config qwen25_05b`) as `trl` finds its accelerate configs. In a checkout,
`configs/` is a link to the same folder, so `--config configs/qwen25_05b.yaml` works too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trainer.usage import UsageError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names that `--config` accepts without a path."""
    return sorted(path.stem for path in CONFIG_DIR.glob("*.yaml"))


def resolve_config(value: str) -> str:
    """A path as given when it exists or names a folder; else a shipped config's name (with or
    without `.yaml`) -> its file."""
    if Path(value).exists():
        return value
    if Path(value).name != value:  # a path, not a name
        raise UsageError(f"--config {value}: no such file")
    shipped = CONFIG_DIR / (value if value.endswith((".yaml", ".yml")) else f"{value}.yaml")
    if shipped.is_file():
        return str(shipped)
    raise UsageError(
        f"--config {value}: no such file, and no shipped config of that name. Shipped configs "
        f"(in {CONFIG_DIR}): {', '.join(shipped_configs())}; copy one to edit it."
    )


def with_shipped_config(argv: Sequence[str]) -> list[str]:
    """`argv` with the value of `--config` resolved by `resolve_config` (TRL's parser reads only
    the `--config VALUE` form)."""
    args = list(argv)
    for i, arg in enumerate(args[:-1]):
        if arg == "--config":
            args[i + 1] = resolve_config(args[i + 1])
    return args
