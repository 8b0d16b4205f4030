"""Service configuration: one pydantic-settings class read from `REWARD_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ROBERTA_MODEL = "facebook/roberta-hate-speech-dynabench-r4-target"


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REWARD_", env_file=".env", extra="ignore")

    scorers: Annotated[list[str], NoDecode] = Field(
        default=["roberta-hate"],
        description="Comma-separated scorers to load; the first is the default for /score.",
    )
    roberta_model: str = Field(
        default=DEFAULT_ROBERTA_MODEL, description="Hub id or local directory of the RoBERTa classifier."
    )
    device: str = Field(default="auto", description="auto (cuda if available), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto = float16 on GPU, float32 on CPU."
    )
    api_key: SecretStr | None = Field(
        default=None, description="When set, every route but /healthz and /readyz needs 'Bearer <key>'."
    )
    max_items_per_request: int = Field(default=1024, ge=1)
    max_text_chars: int = Field(default=20_000, ge=1)
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Request bodies larger than this get 413."
    )
    truncation_side: Literal["left", "right"] = Field(
        default="left", description="Default end to cut for over-long inputs; 'left' keeps the end."
    )
    max_batch_tokens: int = Field(
        default=16_384, ge=1, description="Token budget of one model batch (padded length x items)."
    )
    max_batch_items: int = Field(default=256, ge=1, description="Most items in one model batch.")
    max_wait_ms: float = Field(
        default=5.0, ge=0, description="How long the batcher waits for more items before running."
    )
    queue_capacity: int = Field(
        default=16_384, ge=1, description="Items waiting in one scorer's queue before 503."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 503 answers.")
    openrlhf_strip_pattern: str = Field(
        default=r"<\|[^|<>\s]{1,64}\|>|</?s>|<pad>|<unk>|<mask>|<eos>|<bos>|\[(?:PAD|CLS|SEP|UNK|MASK)\]"
        r"|<(?:start|end)_of_turn>",
        description="Regex of special tokens removed from OpenRLHF's decoded queries before scoring.",
    )
    graceful_shutdown_s: int = Field(
        default=30, ge=0, description="On SIGTERM, how long in-flight requests may take before exit."
    )
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    log_level: str = "info"

    @field_validator("scorers", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("scorers")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("REWARD_SCORERS names no scorer")
        if len(set(value)) != len(value):
            raise ValueError(f"REWARD_SCORERS names a scorer twice: {value}")
        return value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServiceSettings:
        if self.queue_capacity < self.max_items_per_request:
            raise ValueError(
                "REWARD_QUEUE_CAPACITY must be at least REWARD_MAX_ITEMS_PER_REQUEST, "
                "or a full-size request could never be accepted"
            )
        return self

    @property
    def default_scorer(self) -> str:
        return self.scorers[0]
