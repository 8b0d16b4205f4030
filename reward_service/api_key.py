"""The API key rule, one for every route: exactly one `Authorization: Bearer <key>` header."""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from reward_service.settings import ServiceSettings


def bearer_key_matches(headers: Sequence[tuple[bytes, bytes]], api_key: str) -> bool:
    """Exactly one `Authorization` header, `Bearer <api_key>` (the scheme in any case, RFC 9110
    11.1). Two headers never match, whichever holds the key: a proxy and the client disagree on who
    is asking. Constant-time comparison, so the key cannot be guessed byte by byte from response times."""
    given = [value for name, value in headers if name.lower() == b"authorization"]
    if len(given) != 1:
        return False
    scheme, _, token = given[0].strip().partition(b" ")
    # Compare even when the scheme is wrong, so that timing does not tell which part was.
    matches = hmac.compare_digest(token.strip(), api_key.encode())
    return matches and scheme.lower() == b"bearer"


def has_api_key(headers: Sequence[tuple[bytes, bytes]], settings: ServiceSettings) -> bool:
    """True when no key is configured, or `headers` (raw ASGI headers) carry it."""
    if settings.api_key is None:
        return True
    return bearer_key_matches(headers, settings.api_key.get_secret_value())
