"""Server-side limits on a request that its schema alone cannot know."""

from __future__ import annotations

from reward_service.errors import InvalidInput, TooManyItems
from reward_service.settings import ServiceSettings
from shared.schemas import ScoreRequest


def check_limits(request: ScoreRequest, settings: ServiceSettings) -> list[str]:
    """The texts to score, after checking the item count (413) and every text (422)."""
    texts = request.inputs()
    check_count(len(texts), settings)
    fields = ("texts",) if request.texts is not None else ("queries", "responses")
    for field_name in fields:
        check_texts(field_name, getattr(request, field_name), settings)
    return texts


def check_count(items: int, settings: ServiceSettings) -> None:
    if items > settings.max_items_per_request:
        raise TooManyItems(
            f"{items} items in one request; the limit is {settings.max_items_per_request} "
            "(REWARD_MAX_ITEMS_PER_REQUEST): split the list"
        )


def check_texts(field_name: str, texts: list[str], settings: ServiceSettings) -> None:
    """Each text within REWARD_MAX_TEXT_CHARS and encodable as UTF-8 (422 naming the item)."""
    for index, text in enumerate(texts):
        if len(text) > settings.max_text_chars:
            raise InvalidInput(
                f"{field_name}[{index}] has {len(text)} characters; the limit is "
                f"{settings.max_text_chars} (REWARD_MAX_TEXT_CHARS)"
            )
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                # Valid JSON ("\ud800") but not a Unicode string: a tokenizer cannot take it.
                raise InvalidInput(
                    f"{field_name}[{index}] is not valid Unicode: a lone surrogate "
                    f"(U+{ord(text[exc.start]):04X}) at character {exc.start}"
                ) from None


def check_inputs(field_name: str, texts: list[str], settings: ServiceSettings) -> list[str]:
    """`texts` after checking their count (413) and each text (422 naming `field_name[i]`)."""
    check_count(len(texts), settings)
    check_texts(field_name, texts, settings)
    return texts
