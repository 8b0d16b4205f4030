"""Exceptions raised by the reward client: one base class, and one subclass per retry decision.

RewardClientError              every failure of a call; no scores are ever returned with one
├── RewardRequestError         4xx (not 408/429): the request as sent is wrong; never retried
├── RewardScoringError         500 or 424: the service could not score these inputs (the model
│                              failed on them, or the judge's answer cannot be a score); the same
│                              inputs would fail again, so not retried
├── RewardResponseError        a 2xx answer that is not a valid one (not JSON, wrong shape, wrong
│                              number of scores); not retried
└── RewardServiceUnavailable   connect errors, timeouts, 408/429/502/503/504: retried (on every
                               configured server) until the call's deadline, then raised
"""

from __future__ import annotations


class RewardClientError(Exception):
    """Base class for every error the reward client raises."""


class _AnsweredError(RewardClientError):
    """A server answered with an HTTP error status."""

    def __init__(self, status_code: int, detail: object, url: str) -> None:
        self.status_code = status_code
        self.detail = detail
        self.url = url
        super().__init__(f"reward service at {url} answered {status_code}: {detail}")


class RewardRequestError(_AnsweredError):
    """The service rejected the request (a 4xx other than 408 and 429): retrying would not help."""


class RewardScoringError(_AnsweredError):
    """The service could not score these inputs (500: the scorer failed on them; 424: a judge's answer
    cannot be a score, or the judge refused). Sending the same inputs again would fail the same way."""


class RewardResponseError(RewardClientError):
    """A server answered 2xx with something that is not a valid answer."""

    def __init__(self, reason: str, url: str) -> None:
        self.reason = reason
        self.url = url
        super().__init__(f"reward service at {url} sent an invalid answer: {reason}")


class RewardServiceUnavailable(RewardClientError):
    """No configured server produced scores before the call's deadline.

    `attempts` and `last_error` say what was tried; no partial or invented scores are returned.
    """

    def __init__(self, message: str, attempts: int, last_error: str | None) -> None:
        self.attempts = attempts
        self.last_error = last_error
        super().__init__(f"{message} after {attempts} attempt(s); last error: {last_error}")
