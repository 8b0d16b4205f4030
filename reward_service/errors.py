"""One exception per cause, each mapped to one HTTP status by the app."""

from __future__ import annotations


class ServiceError(Exception):
    status_code = 500
    retry_after: int | None = None

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class Unauthorized(ServiceError):
    """No API key, a wrong one, or more than one `Authorization` header."""

    status_code = 401


class BodyTooLarge(ServiceError):
    status_code = 413


class ShuttingDown(ServiceError):
    """Still running when the shutdown grace period ended: retry on another replica."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class UnknownScorer(ServiceError):
    status_code = 404


class TooManyItems(ServiceError):
    status_code = 413


class InvalidInput(ServiceError):
    status_code = 422


class NoClassLogits(InvalidInput):
    """Class probabilities were asked of a scorer that gives one number per text (a judge, an ensemble)."""


class InputTooLong(ServiceError):
    """An input is longer than the model's window and the request asked not to truncate it."""

    status_code = 413


class Overloaded(ServiceError):
    """The scorer's queue is full: come back shortly."""

    status_code = 503

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class NotReady(Overloaded):
    """The scorer is still loading, or failed to load."""


class UpstreamFailed(ServiceError):
    """A remote scorer (e.g. Bedrock) could not score every input."""

    status_code = 502


class UpstreamTimeout(UpstreamFailed):
    status_code = 504


class DeadlineExceeded(ServiceError):
    """Scoring did not finish within the request's deadline; the work under way is cancelled."""

    status_code = 504


class UpstreamRejected(UpstreamFailed):
    """The remote scorer refused for a reason a retry cannot fix (access denied, invalid model id,
    content filter). 424, not 502, so that clients, which retry 502, give up at once."""

    status_code = 424


class ScoringFailed(ServiceError):
    """The model itself failed on a batch (not the client's fault)."""

    status_code = 500
