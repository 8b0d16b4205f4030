"""How long a scoring request may take: what the client says it will wait, less a margin, so that a
request the service cannot finish in time gets a 504 the client still hears."""

from __future__ import annotations

from starlette.datastructures import Headers

from reward_service.errors import InvalidInput
from reward_service.settings import ServiceSettings
from shared.client import TIMEOUT_HEADER

# Kept back from the client's own timeout for the answer's trip back.
MIN_MARGIN_S = 0.25
MARGIN_FRACTION = 0.05


def request_budget_s(headers: Headers, settings: ServiceSettings) -> float:
    """Seconds this request may take: from `X-Reward-Timeout-Ms`, else REWARD_REQUEST_TIMEOUT_S."""
    raw = headers.get(TIMEOUT_HEADER)
    if raw is None:
        return settings.request_timeout_s
    try:
        client_wait_s = int(raw) / 1000
    except ValueError:
        client_wait_s = 0.0
    if client_wait_s <= 0:
        raise InvalidInput(f"header {TIMEOUT_HEADER} must be a positive integer of milliseconds, not {raw!r}")
    return max(0.0, client_wait_s - max(MIN_MARGIN_S, MARGIN_FRACTION * client_wait_s))
