"""vLLM's `POST /classify`, as verl's discriminative reward model and other vLLM clients call it.

Request `{"model", "input": str | [str], "use_activation"}` (older clients send `activation` or
`softmax`); answer `{"id", "object": "list", "created", "model", "data": [{"index", "label", "probs",
"num_classes"}], "usage"}`. `probs` are the classifier's class probabilities, or its raw logits in label
order with the activation off. Errors are vLLM's `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import time
import uuid
from http import HTTPStatus
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from reward_service.activation import default_activation
from reward_service.errors import InputTooLong, InvalidInput, UnknownScorer
from reward_service.protocols.errors import protocol_route
from reward_service.scorers import ScorerRegistry
from reward_service.scoring import registry_of, resolve_scorer, score_texts, settings_of
from reward_service.validation import check_inputs, check_texts


class ClassificationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        default=None, description="A scorer name or its model id (GET /scorers); omitted: the default scorer."
    )
    input: str | list[str] = Field(description="One text or a list of texts.")
    use_activation: StrictBool | None = Field(
        default=None, description="True (default): class probabilities; false: the raw logits."
    )
    activation: StrictBool | None = Field(default=None, description="Older name of use_activation.")
    softmax: StrictBool | None = Field(default=None, description="Oldest name of use_activation.")
    truncate_prompt_tokens: int | None = Field(
        default=None,
        ge=-1,
        description="-1: cut inputs longer than the model's window, keeping their end. Omitted: such "
        "inputs are refused (400), as vLLM does. Other values are not supported.",
    )
    add_special_tokens: StrictBool = Field(default=True, description="Only true is supported.")
    user: str | None = Field(default=None, description="Accepted and ignored.")
    request_id: str | None = Field(default=None, description="Accepted and ignored.")
    priority: int = Field(default=0, description="Only 0 is supported (no priority scheduling).")

    @model_validator(mode="after")
    def _supported(self) -> ClassificationRequest:
        given = {
            name: value
            for name, value in (
                ("use_activation", self.use_activation),
                ("activation", self.activation),
                ("softmax", self.softmax),
            )
            if value is not None
        }
        if len(set(given.values())) > 1:
            raise ValueError(f"{given} disagree; send only 'use_activation'")
        if self.truncate_prompt_tokens not in (None, -1):
            raise ValueError("'truncate_prompt_tokens' may only be -1 (cut to the model's window)")
        if not self.add_special_tokens:
            raise ValueError("'add_special_tokens': false is not supported")
        if self.priority != 0:
            raise ValueError("'priority' other than 0 is not supported (no priority scheduling)")
        return self

    def activated(self) -> bool:
        return next((v for v in (self.use_activation, self.activation, self.softmax) if v is not None), True)


class ClassificationData(BaseModel):
    index: int
    label: str | None
    probs: list[float]
    num_classes: int


class ClassificationUsage(BaseModel):
    prompt_tokens: int = Field(description="Tokens the classifier read; 0 for scorers that do not tokenize.")
    total_tokens: int
    completion_tokens: int = 0
    prompt_tokens_details: None = None


class ClassificationResponse(BaseModel):
    id: str
    object: Literal["list"] = "list"
    created: int
    model: str
    data: list[ClassificationData]
    usage: ClassificationUsage


class VLLMErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int


class VLLMError(BaseModel):
    error: VLLMErrorInfo


def _error_type(status: int) -> str:
    name = HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    return name if name.endswith("Error") else name + "Error"


def vllm_error(status: int, message: str, exc: Exception) -> tuple[int, dict[str, object]]:
    # vLLM answers every invalid request with 400 BadRequestError.
    if status == InvalidInput.status_code or isinstance(exc, InputTooLong):
        status = HTTPStatus.BAD_REQUEST
    param = "model" if isinstance(exc, UnknownScorer) else None
    info = VLLMErrorInfo(message=message, type=_error_type(status), param=param, code=status)
    return status, VLLMError(error=info).model_dump()


_ERRORS = {
    400: {"model": VLLMError, "description": "Invalid request; the message names the field."},
    404: {"model": VLLMError, "description": "Unknown model (neither a scorer name nor its model id)."},
    413: {"model": VLLMError, "description": "Too many texts, or a text longer than the model's window."},
    503: {"model": VLLMError, "description": "Queue full or scorer not ready; see Retry-After."},
    504: {"model": VLLMError, "description": "Not scored within the request's deadline."},
}

router = APIRouter(route_class=protocol_route(vllm_error), tags=["protocols"])


def scorer_for_model(registry: ScorerRegistry, model: str | None) -> str | None:
    """The scorer a vLLM `model` names: a scorer name, else a scorer's model id. An unknown name is
    returned as it is, for the registry to refuse (404 listing the scorers)."""
    if model is None or model in registry.scorers:
        return model
    return next((name for name, scorer in registry.scorers.items() if scorer.info().model == model), model)


@router.post("/classify", response_model=ClassificationResponse, responses=_ERRORS)
async def classify(request: Request, body: ClassificationRequest) -> ClassificationResponse:
    """vLLM-compatible classification (verl's discriminative reward model posts here).

    With `"use_activation": false`, `probs` are the raw logits; a judge or an ensemble (one number per
    text) answers only then, with `probs: [score]` and its name as the label.
    """
    if body.input == "":
        raise InvalidInput("'input' must not be empty")
    if isinstance(body.input, list) and "" in body.input:
        raise InvalidInput(f"'input[{body.input.index('')}]' must not be empty")
    if body.model is not None:
        # Checked first: the 404 for an unknown model quotes it, and a lone surrogate cannot be encoded.
        check_texts("model", [body.model], settings_of(request))
    texts = [body.input] if isinstance(body.input, str) else body.input
    activated = body.activated()
    hint = 'send "use_activation": false to get its score as probs[0]' if activated else None
    scorer = resolve_scorer(
        request, scorer_for_model(registry_of(request), body.model), class_logits_hint=hint
    )
    check_inputs("input", texts, settings_of(request))
    output = await score_texts(
        request,
        "/classify",
        scorer,
        texts,
        # vLLM's truncate_prompt_tokens keeps the end of the prompt.
        truncation_side="left",
        return_labels=True,
        truncate=body.truncate_prompt_tokens is not None,
    )
    data = []
    for index, score in enumerate(output.scores):
        if output.labels is None:
            names, probs = [scorer.name], [score]
        else:
            names = list(output.labels[index])
            logits = [label.logit for label in output.labels[index].values()]
            probs = default_activation(logits) if activated else logits
        best = max(range(len(probs)), key=probs.__getitem__)
        data.append(ClassificationData(index=index, label=names[best], probs=probs, num_classes=len(probs)))
    tokens = output.input_tokens or 0
    return ClassificationResponse(
        id=f"classify-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model or scorer.name,
        data=data,
        usage=ClassificationUsage(prompt_tokens=tokens, total_tokens=tokens),
    )
