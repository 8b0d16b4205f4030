"""Service configuration: one pydantic-settings class read from `REWARD_*` environment variables,
a `.env` file, and (in `reward-service`) command-line flags generated from the same fields.

The settings are built once, in the process that reads flags and the environment. Processes it
starts get that object, serialized (`serialize` / `deserialize`): uvicorn workers through the one
variable `SETTINGS_ENV`, engine processes as their `EngineConfig`. Nothing else re-reads
REWARD_* variables.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, CliSuppress, NoDecode, SettingsConfigDict

from reward_service.engine.protocol import CPU_BATCH_PADDING_TOKENS

DEFAULT_ROBERTA_MODEL = "facebook/roberta-hate-speech-dynabench-r4-target"
# A current Claude inference profile; the article's anthropic.claude-3-sonnet-20240229-v1:0 is retired.
DEFAULT_BEDROCK_MODEL = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
# The one variable through which `reward-service --workers N` hands its settings to the workers.
# No field has this name, so the settings source ignores it.
SETTINGS_ENV = "REWARD_SETTINGS_JSON"
# The scorer backends reward_service.scorers builds, by name; ensembles of them are named in settings.
SCORER_BACKENDS = ("roberta-hate", "claude-bedrock")


class ServiceSettings(BaseSettings):
    # env_ignore_empty: `REWARD_X=` (in .env or the environment) leaves X at its default, as
    # .env.example's empty lines show, rather than failing to parse "" as a number or JSON.
    model_config = SettingsConfigDict(
        env_prefix="REWARD_", env_file=".env", extra="ignore", env_ignore_empty=True
    )

    scorers: Annotated[list[str], NoDecode] = Field(
        default=["roberta-hate"],
        description="Comma-separated scorers to load; the first is the default for /score.",
    )
    roberta_model: str = Field(
        default=DEFAULT_ROBERTA_MODEL, description="Hub id or local directory of the RoBERTa classifier."
    )
    device: str = Field(default="auto", description="auto (cuda if available), cpu, cuda or cuda:N.")
    devices: Annotated[list[str], NoDecode] = Field(
        default=[],
        description="Comma-separated devices, one scoring engine process each (e.g. cuda:0,cuda:1); "
        "requests are spread over them. Unset = REWARD_DEVICE alone.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Front-end processes (HTTP, validation, tokenization) feeding the engines.",
    )
    engine_addresses: CliSuppress[dict[str, list[str]]] = Field(
        default={},
        description="Internal: per model scorer, the sockets of engines started by `reward-service "
        "--workers N`; empty = the front end starts its own engines.",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        default="auto", description="auto = float16 on GPU, float32 on CPU."
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, every route but the health probes (/healthz, /readyz, TEI's GET /health "
        "and GET /) needs 'Bearer <key>'.",
    )
    max_items_per_request: int = Field(default=1024, ge=1, description="More items in one request get 413.")
    max_text_chars: int = Field(default=20_000, ge=1, description="A longer text gets 422.")
    max_body_bytes: int = Field(
        default=64 * 1024 * 1024, ge=1024, description="Request bodies larger than this get 413."
    )
    request_timeout_s: float = Field(
        default=55.0,
        gt=0,
        description="Longest a scoring request may take when the client does not send X-Reward-Timeout-Ms "
        "(the shared client always does); past it, 504. Below the client's default 60 s per attempt.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024, ge=1024, description="Request line and headers larger than this get 431."
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A request's line and headers must arrive within this, else 408."
    )
    body_timeout_s: float = Field(
        default=60.0,
        gt=0,
        description="A request's body must arrive within this after its headers, else 408.",
    )
    keep_alive_s: float = Field(
        default=5.0, gt=0, description="Idle kept-alive connections close after this."
    )
    max_connections: int = Field(
        default=4096,
        ge=1,
        description="Open HTTP connections per front-end process. At the bound the connection silent "
        "longest is closed to admit a new one; if every one is busy, the new one gets 503.",
    )
    truncation_side: Literal["left", "right"] = Field(
        default="left", description="Default end to cut for over-long inputs; 'left' keeps the end."
    )
    max_batch_tokens: int = Field(
        default=16_384, ge=1, description="Token budget of one model batch (padded length x items)."
    )
    max_batch_items: int = Field(default=256, ge=1, description="Most items in one model batch.")
    max_batch_padding_tokens: int | None = Field(
        default=None,
        ge=0,
        description="Padding tokens (padded size - real tokens) one batch may carry before the "
        f"longer items waiting go into another batch. Unset: {CPU_BATCH_PADDING_TOKENS} on a CPU, "
        "where another batch costs about 1 ms and padding little (an encoder runs on its real tokens "
        "only); no limit on a GPU, where each batch costs its kernel launches.",
    )
    max_wait_ms: float = Field(
        default=0.0,
        ge=0,
        description="While the device is idle, how long an engine waits for more items to fill a batch; "
        "0 = run at once (items that arrive meanwhile form the next batch). A full batch "
        "(max_batch_tokens or max_batch_items waiting) runs without waiting.",
    )
    queue_capacity: int = Field(
        default=16_384, ge=1, description="Items waiting in one scorer's queue before 503."
    )
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 503 answers.")
    engine_heartbeat_interval_s: float = Field(
        default=0.5, gt=0, description="How often the supervisor sends each engine process a heartbeat."
    )
    engine_heartbeat_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="An engine that has answered heartbeats and then leaves one unanswered for this long "
        "(stopped or frozen) is killed and restarted; its requests get 503.",
    )
    engine_stall_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="An engine whose busy loop is inside one step (a batch) this long is killed and "
        "restarted, its device taken for hung; above the longest batch the model may take.",
    )
    engine_start_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="An engine that has answered no heartbeat yet this long after its start (its "
        "interpreter or imports frozen or hung) is killed and restarted. Longer than the heartbeat "
        "timeout: importing PyTorch takes seconds, more on a cold disk.",
    )
    engine_standby: bool = Field(
        default=True,
        description="Keep one standby process per model scorer that has imported PyTorch and "
        "transformers, so that a dead or frozen engine is replaced in about a second instead of "
        "the interpreter's start (several seconds); costs that process's memory (a few hundred MB "
        "of host RAM, no GPU memory).",
    )
    openrlhf_strip_pattern: str = Field(
        default=r"<\|[^|<>\s]{1,64}\|>|</?s>|<pad>|<unk>|<mask>|<eos>|<bos>|\[(?:PAD|CLS|SEP|UNK|MASK)\]"
        r"|<(?:start|end)_of_turn>",
        description="Regex of special tokens removed from OpenRLHF's decoded queries before scoring.",
    )
    openrlhf_timeout_s: float = Field(
        default=170.0,
        gt=0,
        description="Longest a /get_reward request may take, all its windows together, when it sends "
        "no X-Reward-Timeout-Ms (OpenRLHF sends none): under OpenRLHF v0.9.0's 180 s wait for a "
        "whole rollout.",
    )
    openrlhf_max_items: int = Field(
        default=16_384,
        ge=1,
        description="Most items in one /get_reward request (OpenRLHF up to v0.9.0 sends a whole "
        "rollout); scored in windows of REWARD_MAX_ITEMS_PER_REQUEST, one after the other, within the "
        "request's one deadline.",
    )
    graceful_shutdown_s: int = Field(
        default=30, ge=0, description="On SIGTERM, how long in-flight requests may take before exit."
    )
    bedrock_model_id: str = Field(
        default=DEFAULT_BEDROCK_MODEL, description="Bedrock model or inference-profile id of the judge."
    )
    bedrock_region: str | None = Field(
        default=None,
        description="AWS region; unset = AWS_REGION, then boto3's chain (AWS_DEFAULT_REGION, profile).",
    )
    bedrock_endpoint_url: str | None = Field(
        default=None, description="bedrock-runtime endpoint override (VPC endpoint, local fake in tests)."
    )
    bedrock_max_concurrency: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Bedrock calls in flight at once for live requests (threads); the connection pool "
        "has twice as many, for calls of ended requests still finishing.",
    )
    bedrock_template: str = Field(
        default="toxicity",
        description="Judge prompt: built-in 'toxicity' (-5..+5) or 'summary-quality' (1.00-5.00), "
        "or the path of a TOML template file.",
    )
    bedrock_use_tools: bool = Field(
        default=True,
        description="Force a tool call with a numeric schema; false = ask for text and parse the number.",
    )
    bedrock_max_tokens: int = Field(default=128, ge=1, le=4096, description="maxTokens of one judge reply.")
    bedrock_scale: float = Field(default=1.0, description="Score = judge's number x scale + offset.")
    bedrock_offset: float = Field(default=0.0, description="Score = judge's number x scale + offset.")
    bedrock_connect_timeout_s: float = Field(
        default=5.0, gt=0, description="Longest wait to connect to Bedrock."
    )
    bedrock_read_timeout_s: float = Field(default=30.0, gt=0, description="Longest wait for one reply.")
    bedrock_max_attempts: int = Field(
        default=8,
        ge=1,
        description="Attempts per text, the first included, for transient faults (throttling, 5xx, "
        "timeouts): the judge's one retry layer (botocore makes one attempt per call).",
    )
    bedrock_retry_total_s: float = Field(
        default=60.0,
        ge=0,
        description="No retry of a text starts later than this many seconds after its first attempt "
        "(nor past the request's deadline).",
    )
    bedrock_cache_size: int = Field(
        default=65_536, ge=0, description="Judge answers kept in memory (LRU); 0 turns the cache off."
    )
    ensembles: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default={},
        description="Weighted sums of scorers: 'name=scorer:weight,scorer:weight;name2=...'. Members must be "
        "listed in REWARD_SCORERS; an ensemble may be listed there too (e.g. first, as the default).",
    )
    host: str = Field(default="0.0.0.0", description="Interface to bind.")
    port: int = Field(default=8000, ge=1, le=65535, description="Port to bind.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="debug, info, warning or error."
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="'json': one JSON object per line (time, level, logger, message, request_id), "
        "for log shippers.",
    )

    @field_validator("devices", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("api_key", mode="before")
    @classmethod
    def _blank_key_is_no_key(cls, value: object) -> object:
        # `REWARD_API_KEY=` in .env, or the variable set to "", means no authentication (as documented),
        # not a required empty key; the clients read a blank key the same way (shared.client).
        secret = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(secret, str) and not secret.strip():
            return None
        return value

    @field_validator("openrlhf_strip_pattern")
    @classmethod
    def _valid_regex(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(
                f"REWARD_OPENRLHF_STRIP_PATTERN is not a valid regular expression: {exc}"
            ) from None
        return value

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

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_case(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("ensembles", mode="before")
    @classmethod
    def _parse_ensembles(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_ensembles(value)
        return value

    @model_validator(mode="after")
    def _queue_holds_a_request(self) -> ServiceSettings:
        if self.queue_capacity < self.max_items_per_request:
            raise ValueError(
                "REWARD_QUEUE_CAPACITY must be at least REWARD_MAX_ITEMS_PER_REQUEST, "
                "or a full-size request could never be accepted"
            )
        if self.engine_heartbeat_timeout_s <= self.engine_heartbeat_interval_s:
            raise ValueError(
                "REWARD_ENGINE_HEARTBEAT_TIMEOUT_S must be longer than REWARD_ENGINE_HEARTBEAT_INTERVAL_S, "
                "or a healthy engine would be killed between two heartbeats"
            )
        return self

    @model_validator(mode="after")
    def _scorers_can_be_built(self) -> ServiceSettings:
        clashes = [name for name in self.ensembles if name in SCORER_BACKENDS]
        if clashes:
            raise ValueError(
                f"REWARD_ENSEMBLES reuses scorer name(s) {clashes}; give the ensemble another name"
            )
        unknown = [
            name for name in self.scorers if name not in SCORER_BACKENDS and name not in self.ensembles
        ]
        if unknown:
            raise ValueError(
                f"REWARD_SCORERS names unknown scorer(s) {unknown}; available: "
                f"{', '.join([*SCORER_BACKENDS, *self.ensembles])}"
            )
        loaded = [name for name in self.scorers if name in SCORER_BACKENDS]
        for name, weights in self.ensembles.items():
            missing = [member for member in weights if member not in loaded]
            if missing:
                raise ValueError(
                    f"REWARD_ENSEMBLES '{name}' uses {missing}, which REWARD_SCORERS does not load; members "
                    f"must be scorers listed in REWARD_SCORERS (available: {', '.join(SCORER_BACKENDS)})"
                )
        return self

    def serialize(self) -> str:
        """Every value as JSON, the API key included (pydantic masks secrets in its own dump), for
        the processes this one starts; `deserialize` reads it back."""
        values = self.model_dump(mode="json")
        if self.api_key is not None:
            values["api_key"] = self.api_key.get_secret_value()
        return json.dumps(values)

    @classmethod
    def deserialize(cls, text: str) -> ServiceSettings:
        """The settings `serialize` wrote, validated again; no environment variable or .env is read."""
        return cls.model_validate_json(text)

    @property
    def engine_devices(self) -> list[str]:
        return self.devices or [self.device]

    @property
    def default_scorer(self) -> str:
        return self.scorers[0]


def settings_from_parent() -> ServiceSettings:
    """The settings the starting process serialized into `SETTINGS_ENV` (uvicorn worker processes)."""
    text = os.environ.get(SETTINGS_ENV)
    if text is None:
        raise RuntimeError(f"{SETTINGS_ENV} is not set: this process was not started by reward-service")
    return ServiceSettings.deserialize(text)


def parse_ensembles(spec: str) -> dict[str, dict[str, float]]:
    """`safety=roberta-hate:0.5,claude-bedrock:0.5;other=...` -> {"safety": {"roberta-hate": 0.5, ...}}."""
    ensembles: dict[str, dict[str, float]] = {}
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        name, sep, members_spec = (x.strip() for x in part.partition("="))
        if not sep or not name:
            raise ValueError(f"REWARD_ENSEMBLES entry '{part}' is not 'name=scorer:weight,...'")
        if name in ensembles:
            raise ValueError(f"REWARD_ENSEMBLES defines '{name}' twice")
        members: dict[str, float] = {}
        for member in (m.strip() for m in members_spec.split(",")):
            scorer, sep, weight_text = (x.strip() for x in member.partition(":"))
            if not sep or not scorer:
                raise ValueError(f"REWARD_ENSEMBLES '{name}': member '{member}' is not 'scorer:weight'")
            try:
                weight = float(weight_text)
            except ValueError:
                raise ValueError(
                    f"REWARD_ENSEMBLES '{name}': weight '{weight_text}' is not a number"
                ) from None
            if not math.isfinite(weight):
                raise ValueError(f"REWARD_ENSEMBLES '{name}': weight of '{scorer}' must be finite")
            if scorer in members:
                raise ValueError(f"REWARD_ENSEMBLES '{name}' lists '{scorer}' twice")
            members[scorer] = weight
        ensembles[name] = members
    return ensembles
