"""Usage errors: a command line or config that cannot work, reported as one line with exit status 2
(argparse's own status for usage errors) before anything is loaded."""

from __future__ import annotations

EXIT_USAGE = 2


class UsageError(SystemExit):
    """Raised while parsing; `rlaif-train` / `rlaif-eval` print `error: <message>` and exit 2."""

    def __init__(self, message: str) -> None:
        super().__init__(EXIT_USAGE)
        self.message = message

    def __str__(self) -> str:
        return self.message
