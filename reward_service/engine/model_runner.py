"""ModelRunner: token ids in, one row of logits per item out, on one device.

Padding is done with numpy into a reused (pinned, on CUDA) host buffer and copied to the device
without blocking; the attention mask is built on the device from the lengths. `launch` queues the
work and returns at once on a GPU, so the engine can prepare the next batch while this one runs;
`collect` waits for the device once per batch.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from reward_service.model_source import check_model_source

if TYPE_CHECKING:
    from reward_service.engine.per_item_attention import EncoderPacking

log = logging.getLogger(__name__)

# Item lengths of the batch that checks a model's packing (`ModelRunner._checked_packing`):
# unequal, so the padded batch has padding to leave out.
PROBE_LENGTHS = (9, 3, 6)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device} was asked for, but CUDA is not available")
    return resolved


def prepare_cuda(device: str) -> None:
    """Create the CUDA context and load cuBLAS for `device` now, if it is a GPU.

    Both take seconds on some machines and PyTorch's bindings hold the GIL through parts of them.
    Done before the engine binds its sockets, they count against the supervisor's start limit
    (REWARD_ENGINE_START_TIMEOUT_S); done in the load thread after a first heartbeat reply, a
    long hold would leave the heartbeat thread silent past the 3 s limit and get the engine killed
    as frozen, at every restart. A device that cannot be used is left to the load to report.
    """
    try:
        resolved = resolve_device(device)
        if resolved.type == "cuda":
            square = torch.ones(8, 8, device=resolved)
            (square @ square).sum().item()
    except Exception as exc:  # noqa: BLE001 - the load reports it, through EngineStatus
        log.warning("could not prepare %s before loading (the load will report it): %s", device, exc)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_classifier(model_path: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    check_model_source(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=dtype)
    return model.to(device).eval()


def broadcast_mask_attention(model: torch.nn.Module) -> str | None:
    """'sdpa' or 'eager' where the model's attention takes a (batch, 1, 1, width) padding mask as it
    is (`ModelRunner._attention_mask`); None where it must be given the 2D mask.

    Only a bidirectional encoder that runs transformers' attention functions does. A causal model (a
    Llama, Qwen or GPT-2 reward model) would lose its causal mask to a 4D one, and a model with
    attention code of its own (DeBERTa-v2) reads a 4D mask its own way: both give wrong logits
    (NaN for DeBERTa-v2) where the 2D mask gives the right ones.
    """
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation not in ("sdpa", "eager") or not getattr(model, "_supports_attention_backend", False):
        return None
    if any(getattr(module, "is_causal", False) for module in model.modules()):
        return None
    return implementation


@dataclass
class LaunchedBatch:
    """A batch whose forward has been queued on the device."""

    size: int
    logits: torch.Tensor  # on the host (pinned on CUDA), filled once `done` has happened
    done: torch.cuda.Event | None

    @property
    def asynchronous(self) -> bool:
        return self.done is not None


class ModelRunner:
    def __init__(
        self,
        model: torch.nn.Module,
        device: torch.device,
        pad_token_id: int | None,
        max_batch_tokens: int,
        on_oom_split: Callable[[], None] = lambda: None,
        per_item_attention: bool | None = None,
        pack_tokens: bool = True,
    ) -> None:
        self.model = model
        self.device = device
        self.pad_token_id = pad_token_id
        # The config a decoder classifier reads its pad id from to find each row's last token.
        self._text_config = model.config.get_text_config()
        self.num_labels = int(model.config.num_labels)
        self._on_oom_split = on_oom_split
        pin = device.type == "cuda"
        # Two host buffers, used in turn: the copy of batch k may still be reading one while batch
        # k+1 is padded into the other.
        self._host_ids = [torch.empty(max_batch_tokens, dtype=torch.int64, pin_memory=pin) for _ in range(2)]
        self._turn = 0
        # Which padding mask the model's attention takes (`_attention_mask`), fixed at load.
        self._attention = broadcast_mask_attention(model)
        self._scores_dtype = next(model.parameters()).dtype if self._attention == "eager" else None
        # On a CPU, attention item by item on its real tokens (`per_item_attention`); on a GPU each
        # item's call would cost kernel launches, and padding is cheap there.
        if per_item_attention is None:
            per_item_attention = device.type == "cpu"
        # With it, the encoder's other layers on the real tokens too (`EncoderPacking`), unless
        # `pack_tokens` is False.
        self.packing: EncoderPacking | None = None
        if per_item_attention and self._attention == "sdpa":
            # Imported here, not at the top: imported at interpreter start (the test engine gate's
            # sitecustomize imports this module), the engine never answered its first heartbeat
            # (test_a_frozen_engine_is_noticed_killed_and_replaced); the cause is not known yet.
            from reward_service.engine.per_item_attention import EncoderPacking, use_per_item_attention

            use_per_item_attention(model)
            if pack_tokens:
                self.packing = self._checked_packing(EncoderPacking.attach(model))

    @torch.inference_mode()
    def _checked_packing(self, packing: EncoderPacking | None) -> EncoderPacking | None:
        """`packing` if a probe batch of unequal lengths gives the same logits with it as without.

        An encoder whose layers read the batch's layout (a position bias of their own, say) would
        score packed tokens wrongly, or fail on them: it runs unpacked instead, as before.
        """
        if packing is None:
            return None
        vocab = int(self._text_config.vocab_size)
        probe = [(np.arange(length, dtype=np.int64) * 7 + 3) % vocab for length in PROBE_LENGTHS]
        packing.enabled = False
        padded = self._forward(probe).float()
        packing.enabled = True
        try:
            gap = (self._forward(probe).float() - padded).abs().max().item()
        except Exception as exc:  # noqa: BLE001 - whatever the failure, this model is not packed
            failure: str | None = f"failed on a probe batch: {exc}"
        else:
            dtype = next(self.model.parameters()).dtype
            tolerance = torch.finfo(dtype).eps ** 0.5 * max(1.0, padded.abs().max().item())
            # Written so that a NaN gap fails too.
            failure = None if gap <= tolerance else f"gave logits up to {gap:.3g} from the padded batch's"
        if failure is None:
            return packing
        packing.enabled = False
        log.warning("%s: packing its tokens %s; it runs unpacked", type(self.model).__name__, failure)
        return None

    @torch.inference_mode()
    def launch(self, sequences: list[np.ndarray]) -> LaunchedBatch:
        """Queue the forward of one batch; on CUDA out-of-memory, run it in halves instead."""
        try:
            logits = self._forward(sequences)
        except torch.cuda.OutOfMemoryError:
            if len(sequences) == 1:
                raise
            self._on_oom_split()
            torch.cuda.empty_cache()
            half = len(sequences) // 2
            log.warning(
                "CUDA out of memory on %d items; retrying as %d + %d",
                len(sequences),
                half,
                len(sequences) - half,
            )
            first, second = self.launch(sequences[:half]), self.launch(sequences[half:])
            return LaunchedBatch(len(sequences), torch.cat([self.collect(first), self.collect(second)]), None)
        if self.device.type != "cuda":
            return LaunchedBatch(len(sequences), logits.float(), None)
        host = torch.empty(logits.shape, dtype=torch.float32, pin_memory=True)
        host.copy_(logits, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return LaunchedBatch(len(sequences), host, done)

    def collect(self, batch: LaunchedBatch) -> torch.Tensor:
        """The batch's logits on the host, float32, one row per item."""
        if batch.done is not None:
            batch.done.synchronize()
        return batch.logits

    def _forward(self, sequences: list[np.ndarray]) -> torch.Tensor:
        lengths = [len(ids) for ids in sequences]
        width = max(lengths)
        host = self._host_ids[self._turn]
        self._turn ^= 1
        if len(sequences) * width > host.numel():
            host = torch.empty(len(sequences) * width, dtype=torch.int64, pin_memory=host.is_pinned())
        padded = host[: len(sequences) * width].view(len(sequences), width)
        padded_np = padded.numpy()
        pad = self.pad_token_id
        if pad is None:
            pad = _id_ending_no_row(sequences)
            # A decoder classifier scores the last token that is not the pad id, and refuses a batch
            # with no pad id at all: an id that ends no row makes that each row's real last token.
            self._text_config.pad_token_id = pad
        padded_np.fill(pad)
        for row, ids in enumerate(sequences):
            padded_np[row, : len(ids)] = ids
        input_ids = padded.to(self.device, non_blocking=True)
        lengths_on_device = torch.tensor(lengths, dtype=torch.int64).to(self.device, non_blocking=True)
        # From the lengths, not from `ids != pad`: a text may contain the pad token's own string.
        keep = torch.arange(width, device=self.device)[None, :] < lengths_on_device[:, None]
        return self.model(input_ids=input_ids, attention_mask=self._attention_mask(keep)).logits

    def _attention_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """The padding mask in the form the model's attention takes at least cost.

        Given the usual 2D mask, transformers expands it to (batch, 1, width, width) for every
        forward: on a CPU about a quarter of a small model's forward (a 24 x 280-token batch of the
        tiny stand-in: 20 ms against 15 ms). A mask already in 4D is used as it is, and attention
        broadcasts (batch, 1, 1, width) over the query positions: the same logits, bit for bit.
        """
        if self._attention == "sdpa":
            return keep[:, None, None, :]
        if self._attention == "eager":  # adds the mask to the attention scores
            assert self._scores_dtype is not None
            additive = torch.zeros(keep.shape, dtype=self._scores_dtype, device=keep.device)
            return additive.masked_fill_(~keep, torch.finfo(self._scores_dtype).min)[:, None, None, :]
        return keep.long()  # causal models, flash-attention, attention of the model's own: the 2D mask


def _id_ending_no_row(sequences: list[np.ndarray]) -> int:
    """The smallest token id that is no sequence's last token."""
    last_tokens = {int(ids[-1]) for ids in sequences if len(ids)}
    return next(candidate for candidate in itertools.count() if candidate not in last_tokens)
