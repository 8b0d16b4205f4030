"""The `reward-service` console script: checks that the [service] extra is installed, then runs
`reward_service.cli` (whose imports need it)."""

from __future__ import annotations

from shared.extras import require_extra


def main() -> None:
    require_extra("reward-service", "service")
    from reward_service.cli import main as serve

    serve()
