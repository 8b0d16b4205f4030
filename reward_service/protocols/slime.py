"""slime's remote reward model, `POST /slime/reward` (`--rm-type remote_rm --rm-url ...`).

slime posts `{"prompt", "response", "label"}` for each sample and takes the JSON it gets back as the
sample's reward: here a bare number, the default scorer's score of prompt + response, stripped of
special tokens as `/get_reward` strips a query. `prompt` is text (slime applies the chat template
when asked) or a list of chat messages, whose contents are joined one per line (a message whose
`content` is null, such as a tool-call turn, adds nothing).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from reward_service.body_decoding import DecodedBodyRoute
from reward_service.errors import InvalidInput
from reward_service.protocols.openrlhf import strip_special_tokens
from reward_service.scoring import resolve_scorer, score_texts, settings_of
from reward_service.validation import check_inputs
from shared.schemas import ErrorBody, SlimeRequest

router = APIRouter(route_class=DecodedBodyRoute, tags=["protocols"])

_ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong API key."},
    413: {"model": ErrorBody, "description": "Body too large."},
    422: {"model": ErrorBody, "description": "Invalid input; the message names the field."},
    503: {"model": ErrorBody, "description": "Queue full or scorer not ready; see Retry-After."},
    504: {"model": ErrorBody, "description": "Not scored within the request's deadline."},
}


def prompt_text(prompt: str | list[dict[str, object]]) -> str:
    if isinstance(prompt, str):
        return prompt
    parts = []
    for index, message in enumerate(prompt):
        if "content" in message and message["content"] is None:
            continue  # `"content": null`, as chat formats write an assistant's tool-call turn: no text
        content = message.get("content")
        if isinstance(content, list):  # content blocks: keep the text ones
            texts = [block.get("text") for block in content if isinstance(block, dict)]
            content = "".join(text for text in texts if isinstance(text, str))
        if not isinstance(content, str):
            raise InvalidInput(f"prompt[{index}] has no text 'content'")
        parts.append(content)
    return "\n".join(parts)


@router.post("/slime/reward", response_model=float, responses=_ERRORS)
async def slime_reward(request: Request, body: SlimeRequest) -> float:
    """The reward of one sample, as a bare JSON number (leave slime's `--reward-key` unset)."""
    prompt = prompt_text(body.prompt)
    scorer = resolve_scorer(request, None)
    settings = settings_of(request)
    # Limits apply to what the client sent, before the special tokens are stripped.
    check_inputs("prompt", [prompt], settings)
    check_inputs("response", [body.response], settings)
    text = strip_special_tokens(prompt + body.response, settings)
    output = await score_texts(request, "/slime/reward", scorer, [text])
    return output.scores[0]
