"""Server-side limits on a request that its schema alone cannot know."""

from __future__ import annotations

from reward_service.errors import InvalidInput, TooManyItems
from reward_service.settings import ServiceSettings
from shared.schemas import ScoreRequest


def check_limits(request: ScoreRequest, settings: ServiceSettings) -> list[str]:
    """The texts to score, after checking the item count (413) and every text's length (422)."""
    texts = request.inputs()
    if len(texts) > settings.max_items_per_request:
        raise TooManyItems(
            f"{len(texts)} items in one request; the limit is {settings.max_items_per_request} "
            "(REWARD_MAX_ITEMS_PER_REQUEST): split the list"
        )
    fields = ("texts",) if request.texts is not None else ("queries", "responses")
    for field_name in fields:
        for index, text in enumerate(getattr(request, field_name)):
            if len(text) > settings.max_text_chars:
                raise InvalidInput(
                    f"{field_name}[{index}] has {len(text)} characters; the limit is "
                    f"{settings.max_text_chars} (REWARD_MAX_TEXT_CHARS)"
                )
    return texts
