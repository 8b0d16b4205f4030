"""Wire schemas shared by the reward service and its clients.

Kept free of torch and of any server dependency so that a client-only install stays small.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, StrictBool, computed_field, model_validator

ScoreOn = Literal["query_response", "response"]
TruncationSide = Literal["left", "right"]
# Request header: how long the client will wait for this attempt, in whole milliseconds; the service
# answers 504 before it passes.
TIMEOUT_HEADER = "X-Reward-Timeout-Ms"


class _Strict(BaseModel):
    # Unknown fields are rejected so that a typo ("response" for "responses") is an error, not ignored.
    model_config = ConfigDict(extra="forbid")


class ScoreRequest(_Strict):
    """Either plain `texts`, or `queries` and `responses` of equal length."""

    texts: list[str] | None = Field(default=None, description="Texts to score, as they are.")
    queries: list[str] | None = Field(default=None, description="Prompts; paired with `responses`.")
    responses: list[str] | None = Field(default=None, description="Responses; paired with `queries`.")
    score_on: ScoreOn = Field(
        default="query_response",
        description="For pairs: score query + response (as in the reference pipeline) or the response alone.",
    )
    return_labels: StrictBool = Field(
        default=False,
        description="Also return every label's logit and probability per input (classifiers only: "
        "a judge or an ensemble refuses it with 422).",
    )
    truncation_side: TruncationSide | None = Field(
        default=None,
        description="Which end to cut when an input is longer than the model's window: "
        "'left' keeps the end (the server's default), 'right' keeps the start.",
    )

    @model_validator(mode="after")
    def _one_input_form(self) -> ScoreRequest:
        has_pairs = self.queries is not None or self.responses is not None
        if self.texts is not None and has_pairs:
            raise ValueError("give either 'texts' or 'queries' + 'responses', not both")
        if self.texts is None and not has_pairs:
            raise ValueError("give 'texts', or 'queries' and 'responses'")
        if has_pairs:
            if self.queries is None or self.responses is None:
                missing = "queries" if self.queries is None else "responses"
                raise ValueError(f"'{missing}' is missing: 'queries' and 'responses' go together")
            if len(self.queries) != len(self.responses):
                raise ValueError(
                    f"'queries' has {len(self.queries)} items but 'responses' has {len(self.responses)}"
                )
        if len(self.inputs()) == 0:
            raise ValueError("'texts' (or 'queries'/'responses') must not be empty")
        return self

    def inputs(self) -> list[str]:
        """The strings the scorer sees, in request order."""
        if self.texts is not None:
            return self.texts
        assert self.queries is not None and self.responses is not None
        if self.score_on == "response":
            return list(self.responses)
        # Plain concatenation, as the reference pipeline scores `query + response`.
        return [q + r for q, r in zip(self.queries, self.responses, strict=True)]


class LabelScore(BaseModel):
    logit: float
    probability: float


class ScoreResponse(BaseModel):
    scorer: str = Field(description="The scorer that produced the scores.")
    model: str = Field(description="Model id or path behind the scorer.")
    scores: list[float] = Field(description="One reward per input, in input order. Higher is less toxic.")
    truncated: int = Field(default=0, description="How many inputs were cut to the model's window.")
    labels: list[dict[str, LabelScore]] | None = Field(
        default=None, description="Per input, every label's logit and probability (with return_labels)."
    )
    members: dict[str, list[float]] | None = Field(
        default=None, description="For ensembles: each member scorer's scores."
    )


class ScorerInfo(BaseModel):
    """One scorer as /scorers describes it."""

    name: str
    kind: str
    model: str
    device: str | None = None
    dtype: str | None = None
    state: Literal["loading", "ready", "failed"]
    error: str | None = Field(default=None, description="Why the scorer failed, if it did.")
    labels: list[str] | None = None
    max_tokens: int | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ready(self) -> bool:
        return self.state == "ready"


class Limits(BaseModel):
    max_items_per_request: int = Field(ge=1)
    max_text_chars: int = Field(ge=1)


class ScorersResponse(BaseModel):
    default: str
    scorers: list[ScorerInfo]
    limits: Limits


class OpenRLHFRequest(_Strict):
    """OpenRLHF's remote reward request (`--reward.remote_url`, before 0.10.2 `--remote_rm_url`)."""

    query: list[str] = Field(description="Prompt + response, decoded with special tokens; may be empty.")
    prompts: list[str] | None = Field(default=None, description="The prompts alone; one per query.")
    labels: list[JsonValue] | None = Field(
        default=None,
        description="The dataset's label of each sample, of any JSON type; one per query. Accepted and "
        "not used: the scorers here need no reference answer.",
    )


class OpenRLHFResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]]


class SlimeRequest(_Strict):
    """What slime's `remote_rm` posts to `--rm-url`, one sample per request."""

    prompt: str | list[dict[str, JsonValue]] = Field(
        description="The prompt as text (with its chat template applied, or not), or chat messages."
    )
    response: str = Field(description="The generated response.")
    label: JsonValue = Field(default=None, description="The sample's label; accepted and not used.")


class ErrorBody(BaseModel):
    detail: str | list[dict[str, object]]
