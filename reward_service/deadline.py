"""How long a scoring request may take: what the client says it will wait, less a margin, so that a
request the service cannot finish in time gets a 504 the client still hears."""

from __future__ import annotations

import re

from starlette.datastructures import Headers

from reward_service.errors import InvalidInput
from reward_service.settings import ServiceSettings
from shared.schemas import TIMEOUT_HEADER

# Kept back from the client's own timeout for the answer's trip back.
MIN_MARGIN_S = 0.25
MARGIN_FRACTION = 0.05
# Plain ASCII digits, at most nine (11.5 days): `int()` alone would take "+5", " 5", "1_0" and
# non-ASCII digits, and a 400-digit number overflows the float the budget is computed in.
MAX_TIMEOUT_DIGITS = 9
_MILLISECONDS = re.compile(rf"[0-9]{{1,{MAX_TIMEOUT_DIGITS}}}")


DEFAULT_BUDGET_SETTING = "request_timeout_s"


def budget_variable(setting: str) -> str:
    """The environment variable of a budget setting: `request_timeout_s` -> REWARD_REQUEST_TIMEOUT_S."""
    return f"{ServiceSettings.model_config['env_prefix']}{setting.upper()}"


def request_budget_s(
    headers: Headers, settings: ServiceSettings, setting: str = DEFAULT_BUDGET_SETTING
) -> float:
    """Seconds this request may take: from `X-Reward-Timeout-Ms`, else the route's budget `setting`
    (REWARD_REQUEST_TIMEOUT_S unless the route has its own)."""
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return float(getattr(settings, setting))
    client_wait_s = int(raw) / 1000 if _MILLISECONDS.fullmatch(raw) else 0.0
    if client_wait_s <= 0:
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise InvalidInput(
            f"header {TIMEOUT_HEADER} must be a positive integer of milliseconds with at most "
            f"{MAX_TIMEOUT_DIGITS} digits, not {shown!r}"
        )
    return max(0.0, client_wait_s - max(MIN_MARGIN_S, MARGIN_FRACTION * client_wait_s))
