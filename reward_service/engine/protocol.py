"""The messages between front ends and a scoring engine: the whole protocol, in one module.

Transport: one ZMQ ROUTER socket per engine (bound on an `ipc://` path), one DEALER per front-end
process and engine. Every message is one msgpack frame encoded by msgspec; token ids and logits
travel as packed little-endian arrays (`bytes`), not as lists of Python ints, so neither side
spends its time converting numbers one by one.

Front end -> engine: `ScoreItems`, `CancelItems`, `StatusQuery`.
Engine -> front end: `ScoredItems` or `EngineFailure` (one per `ScoreItems`), `EngineStatus`.

Liveness has a socket of its own (`heartbeat_address`): a thread of the engine answers each
`Heartbeat` with a `HeartbeatReply` at once, even while a long batch runs, so that a reply that
does not come means a frozen process (SIGSTOP, swapped out, hung in the kernel), and the reply
says how long the busy loop has been inside one step (a batch hung on its device).
"""

from __future__ import annotations

from typing import Literal

import msgspec
import numpy as np

TOKEN_DTYPE = np.dtype("<i4")
LOGIT_DTYPE = np.dtype("<f4")


class ScoreItems(msgspec.Struct, tag=True, frozen=True):
    """Score `len(lengths)` token sequences, packed one after the other in `token_ids`.

    `budget_s`: seconds until the front end stops waiting (0: no deadline); the engine refuses the
    request at once if it cannot finish in time (see `admission`). `sender_idle`: the front end had
    no other request in progress when it sent this one, so it waits on this engine and leaves its
    core free (a CPU engine alone with such a request runs it on every core)."""

    request_id: int
    token_ids: bytes
    lengths: list[int]
    budget_s: float = 0.0
    sender_idle: bool = False


class CancelItems(msgspec.Struct, tag=True, frozen=True):
    """The client went away: drop whatever of this request has not run yet."""

    request_id: int


class StatusQuery(msgspec.Struct, tag=True, frozen=True):
    request_id: int


class ScoredItems(msgspec.Struct, tag=True, frozen=True):
    """One row of `num_labels` logits per item, in the order the items were sent.

    `inference_s`: from the start of the first batch holding one of its items to the end of the
    last (seconds). The rest of the front end's wait is queueing: the engine cannot timestamp a
    message that waits in its socket while the model runs.
    """

    request_id: int
    logits: bytes
    num_labels: int
    inference_s: float = 0.0
    tokens_per_s: float = 0.0


FailureKind = Literal["overloaded", "not_ready", "shutting_down", "model_error"]


class EngineFailure(msgspec.Struct, tag=True, frozen=True):
    """`ScoreItems` could not be scored. Only `model_error` is a fault of the engine itself."""

    request_id: int
    kind: FailureKind
    message: str


EngineState = Literal["loading", "ready", "failed"]


class ModelCard(msgspec.Struct, frozen=True):
    """The engine's model as a front end tokenizes for it: its labels in id order, its window in
    tokens, and its fast tokenizer (the `tokenizers` library's JSON)."""

    labels: list[str]
    max_tokens: int
    tokenizer_json: str


class EngineStatus(msgspec.Struct, tag=True, frozen=True):
    """`card`: the model's card, once it has loaded (state "ready")."""

    request_id: int
    state: EngineState
    pid: int
    device: str | None = None
    dtype: str | None = None
    error: str | None = None
    card: ModelCard | None = None


# Padding tokens a CPU batch may carry before the rest of its window goes into another batch. An
# encoder packed on its real tokens (`per_item_attention.EncoderPacking`) pays for padding only in
# its embeddings and head; unpacked, with attention item by item, padding cost about half a real
# token: for the tiny stand-in on one thread another batch paid for itself once it saved
# about 2,000 tokens of padding (a lone 16-pair request: 8.1 ms as one batch, 8.5 ms as two under a
# limit of 512; docs/benchmarks.md).
CPU_BATCH_PADDING_TOKENS = 2048


class EngineConfig(msgspec.Struct, frozen=True):
    """What the supervisor tells an engine process at start (JSON on its command line)."""

    scorer: str
    address: str
    model_path: str
    device: str
    dtype: str
    max_batch_tokens: int
    max_batch_items: int
    max_wait_ms: float
    queue_capacity: int
    max_batch_padding_tokens: int | None = None
    # The service's log settings, so that engine lines look like the front end's.
    log_level: str = "info"
    log_format: str = "text"


class Heartbeat(msgspec.Struct, tag=True, frozen=True):
    sequence: int


class HeartbeatReply(msgspec.Struct, tag=True, frozen=True):
    """`busy_s`: how long the busy loop has been in its current step (0 when it is waiting);
    `ready`: the model has loaded."""

    sequence: int
    pid: int
    busy_s: float
    ready: bool = False


def heartbeat_address(address: str) -> str:
    """The heartbeat socket next to an engine's work socket (`ipc://x.sock` -> `ipc://x.sock.hb`)."""
    return f"{address}.hb"


ToEngine = ScoreItems | CancelItems | StatusQuery
FromEngine = ScoredItems | EngineFailure | EngineStatus

_encoder = msgspec.msgpack.Encoder()
_to_engine = msgspec.msgpack.Decoder(ToEngine)
_from_engine = msgspec.msgpack.Decoder(FromEngine)


_heartbeat = msgspec.msgpack.Decoder(Heartbeat)
_heartbeat_reply = msgspec.msgpack.Decoder(HeartbeatReply)


def encode(message: ToEngine | FromEngine | Heartbeat | HeartbeatReply) -> bytes:
    return _encoder.encode(message)


def decode_to_engine(frame: bytes) -> ToEngine:
    return _to_engine.decode(frame)


def decode_from_engine(frame: bytes) -> FromEngine:
    return _from_engine.decode(frame)


def decode_heartbeat(frame: bytes) -> Heartbeat:
    return _heartbeat.decode(frame)


def decode_heartbeat_reply(frame: bytes) -> HeartbeatReply:
    return _heartbeat_reply.decode(frame)


def pack_token_ids(sequences: list[list[int]]) -> tuple[bytes, list[int]]:
    lengths = [len(ids) for ids in sequences]
    flat = np.concatenate([np.asarray(ids, dtype=TOKEN_DTYPE) for ids in sequences])
    return flat.tobytes(), lengths


def unpack_logits(message: ScoredItems) -> list[list[float]]:
    return np.frombuffer(message.logits, dtype=LOGIT_DTYPE).reshape(-1, message.num_labels).tolist()
