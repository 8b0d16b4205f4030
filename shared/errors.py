"""Exceptions raised by the reward client."""

from __future__ import annotations


class RewardClientError(Exception):
    """Base class for every error the reward client raises."""


class RewardRequestError(RewardClientError):
    """The service rejected the request (a 4xx other than 429): retrying would not help."""

    def __init__(self, status_code: int, detail: object, url: str) -> None:
        self.status_code = status_code
        self.detail = detail
        self.url = url
        super().__init__(f"reward service at {url} answered {status_code}: {detail}")


class RewardServiceUnavailable(RewardClientError):
    """No configured server produced scores within the retry budget.

    `attempts` and `last_error` say what was tried; no partial or invented scores are returned.
    """

    def __init__(self, message: str, attempts: int, last_error: str | None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(f"{message} after {attempts} attempt(s); last error: {last_error}")
