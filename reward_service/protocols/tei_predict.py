"""text-embeddings-inference's `POST /predict` (and its alias `POST /`), as TEI clients and
`huggingface_hub.InferenceClient(...).text_classification` call it.

Request `{"inputs": str | [str] | [[str], ...], "raw_scores", "truncate", "truncation_direction"}`;
answer `[{"score", "label"}, ...]` sorted by score, highest first (a list of such lists for a batch).
Errors are TEI's `{"error", "error_type"}`.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from reward_service.activation import default_activation, sigmoid, softmax
from reward_service.errors import (
    InputTooLong,
    InvalidInput,
    NotReady,
    Overloaded,
    ShuttingDown,
    TooManyItems,
    Unauthorized,
    UpstreamFailed,
)
from reward_service.protocols.errors import protocol_route
from reward_service.scoring import resolve_scorer, score_texts, settings_of
from reward_service.validation import check_inputs
from shared.schemas import TruncationSide

Transform = Literal["sigmoid", "softmax", "none"]


class TextClassificationParameters(BaseModel):
    """What huggingface_hub's `text_classification` sends along (Inference API task parameters)."""

    model_config = ConfigDict(extra="forbid")

    function_to_apply: Transform | None = Field(
        default=None, description="'none' = raw scores; 'softmax' or 'sigmoid' over the logits."
    )
    top_k: int | None = Field(default=None, ge=1, description="Keep only the k highest-scoring labels.")


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inputs: str | list[str] | list[list[str]] = Field(
        description="A text, [text], or a batch [[text], [text], ...]. Pairs ([text, text]) are refused: "
        "the scorers here classify single texts."
    )
    raw_scores: StrictBool = Field(default=False, description="True: logits; false: probabilities.")
    truncate: StrictBool | None = Field(
        default=None,
        description="False: an input longer than the model's window is refused (413). Omitted or true: "
        "it is cut (this service always could; TEI needs --auto-truncate).",
    )
    truncation_direction: Literal["left", "right", "Left", "Right"] | None = Field(
        default=None, description="The end to cut; omitted: REWARD_TRUNCATION_SIDE (default left)."
    )
    parameters: TextClassificationParameters | None = None

    @model_validator(mode="after")
    def _consistent(self) -> PredictRequest:
        function = self.parameters.function_to_apply if self.parameters else None
        if self.raw_scores and function in ("softmax", "sigmoid"):
            raise ValueError(f"'raw_scores': true contradicts 'function_to_apply': '{function}'")
        return self

    def batch(self) -> tuple[list[str], bool]:
        """The texts, and whether the answer is a batch (a list of lists)."""
        if isinstance(self.inputs, str):
            return [self.inputs], False
        if not self.inputs:
            raise InvalidInput("'inputs' must not be empty")
        if isinstance(self.inputs[0], str):
            return [_single(self.inputs, "inputs")], False
        return [_single(sequence, f"inputs[{i}]") for i, sequence in enumerate(self.inputs)], True

    def transform(self) -> Transform | None:
        """'none', 'softmax', 'sigmoid', or None for the default (softmax; sigmoid for one output)."""
        function = self.parameters.function_to_apply if self.parameters else None
        return "none" if self.raw_scores else function


def _single(sequence: list[str], where: str) -> str:
    if len(sequence) == 1:
        return sequence[0]
    if len(sequence) == 2:
        raise InvalidInput(
            f"{where} is a pair [text, text_pair]; the scorers here classify single texts (a batch of "
            "texts is [[text], [text], ...])"
        )
    raise InvalidInput(f"{where} has {len(sequence)} strings; a sequence is [text]")


class Prediction(BaseModel):
    score: float
    label: str


class TEIError(BaseModel):
    error: str
    # TEI's ErrorType variants as its server writes them (serde's default: the variant's name), and
    # `Unauthorized` for the 401, which TEI answers with no body.
    error_type: Literal[
        "Validation", "Tokenizer", "Empty", "Overloaded", "Unhealthy", "Backend", "Unauthorized"
    ]


def tei_error(status: int, message: str, exc: Exception) -> tuple[int, dict[str, object]]:
    """TEI's status and error type for a service error: an overload is TEI's 429, and too many
    inputs or an input over the window with `truncate: false` TEI's 422 validation error."""
    if isinstance(exc, Unauthorized):
        kind = "Unauthorized"
    elif isinstance(exc, NotReady | ShuttingDown):
        kind = "Unhealthy"
    elif isinstance(exc, Overloaded):
        kind, status = "Overloaded", HTTPStatus.TOO_MANY_REQUESTS
    elif isinstance(exc, UpstreamFailed) or status >= 500:
        kind = "Backend"
    else:
        kind = "Validation"
        if isinstance(exc, TooManyItems | InputTooLong):
            status = HTTPStatus.UNPROCESSABLE_ENTITY
    return status, TEIError(error=message, error_type=kind).model_dump()


_ERRORS = {
    404: {"model": TEIError, "description": "Unknown scorer."},
    413: {"model": TEIError, "description": "Body over REWARD_MAX_BODY_BYTES."},
    422: {
        "model": TEIError,
        "description": "Invalid request (the message names the field), too many texts, or a text too "
        "long with 'truncate': false, as TEI answers them.",
    },
    424: {"model": TEIError, "description": "A remote scorer refused some inputs for good."},
    429: {
        "model": TEIError,
        "description": "Overloaded (queue full, or no time to finish); see Retry-After.",
    },
    503: {"model": TEIError, "description": "Scorer not ready, or shutting down; see Retry-After."},
    504: {"model": TEIError, "description": "Not scored within the request's deadline."},
}
PredictResponse = list[Prediction] | list[list[Prediction]]

router = APIRouter(route_class=protocol_route(tei_error), tags=["protocols"])


def _apply(transform: Transform | None, logits: list[float]) -> list[float]:
    if transform == "none":
        return logits
    if transform == "softmax":
        return softmax(logits)
    if transform == "sigmoid":
        return sigmoid(logits)
    return default_activation(logits)


async def _predict(
    request: Request, route: str, scorer_name: str | None, body: PredictRequest
) -> PredictResponse:
    texts, is_batch = body.batch()
    transform = body.transform()
    side: TruncationSide | None = body.truncation_direction.lower() if body.truncation_direction else None  # type: ignore[assignment]
    hint = None if transform == "none" else 'send "raw_scores": true to get its score'
    scorer = resolve_scorer(request, scorer_name, class_logits_hint=hint)
    check_inputs("inputs", texts, settings_of(request))
    output = await score_texts(
        request,
        route,
        scorer,
        texts,
        truncation_side=side,
        return_labels=True,
        truncate=body.truncate is not False,
    )
    top_k = body.parameters.top_k if body.parameters else None
    answers = []
    for index, score in enumerate(output.scores):
        if output.labels is None:
            predictions = [Prediction(score=score, label=scorer.name)]
        else:
            labels = output.labels[index]
            values = _apply(transform, [label.logit for label in labels.values()])
            predictions = [Prediction(score=v, label=name) for name, v in zip(labels, values, strict=True)]
        predictions.sort(key=lambda p: p.score, reverse=True)
        answers.append(predictions[:top_k])
    return answers if is_batch else answers[0]


@router.post("/predict", response_model=PredictResponse, responses=_ERRORS)
async def predict(request: Request, body: PredictRequest) -> PredictResponse:
    """TEI-compatible classification with the default scorer: every label's probability (or logit,
    with `raw_scores`), highest first. A judge or an ensemble answers only with `raw_scores`: one
    prediction, its score, labelled with the scorer's name."""
    return await _predict(request, "/predict", None, body)


@router.post("/", response_model=PredictResponse, responses=_ERRORS)
async def predict_root(request: Request, body: PredictRequest) -> PredictResponse:
    """TEI's alias of POST /predict (where `InferenceClient(model=URL)` posts)."""
    return await _predict(request, "/", None, body)


@router.post("/predict/{scorer}", response_model=PredictResponse, responses=_ERRORS)
async def predict_named(request: Request, scorer: str, body: PredictRequest) -> PredictResponse:
    """As POST /predict, with the named scorer (see GET /scorers)."""
    return await _predict(request, "/predict/{scorer}", scorer, body)
