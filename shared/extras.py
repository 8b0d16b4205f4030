"""Which optional extra each console script needs, checked before anything heavy is imported.

`pip install rlaif-reward` (the client) also installs the `reward-service`, `rlaif-train` and
`rlaif-eval` scripts; without their extra they would die on a `ModuleNotFoundError` deep in an
import. `require_extra` says instead which extra to install. It only looks the modules up
(`importlib.util.find_spec`), so it costs milliseconds.
"""

from __future__ import annotations

import importlib.util

DISTRIBUTION = "rlaif-reward"
# Top-level modules of each extra's requirements in pyproject.toml (tests/test_packaging.py checks
# that every requirement is covered).
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "service": (
        "torch",
        "transformers",
        "tokenizers",
        "fastapi",
        "anyio",
        "uvicorn",
        "pydantic_settings",
        "prometheus_client",
        "boto3",
        "zmq",
        "msgspec",
        "numpy",
    ),
    "train": (
        "torch",
        "transformers",
        "trl",
        "datasets",
        "peft",
        "accelerate",
        "matplotlib",
        "tensorboard",
        "yaml",
        "requests",
    ),
}


def missing_modules(extra: str) -> list[str]:
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require_extra(command: str, extra: str) -> None:
    """Exit with status 1 and the install command when `extra`'s modules are not all installed."""
    missing = missing_modules(extra)
    if missing:
        raise SystemExit(
            f"{command} needs the [{extra}] extra, which is not installed "
            f"(missing: {', '.join(missing)}).\n"
            f'Install it with: pip install "{DISTRIBUTION}[{extra}]"'
            f'  (from a checkout: pip install ".[{extra}]")'
        )
