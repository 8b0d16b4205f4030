"""An encoder on each item's own tokens, on a CPU: attention item by item, and the encoder's other
layers on the real tokens only.

In a padded batch every row's attention costs the batch's width squared, and every other layer
(the dense layers, layer norms, activations) runs on every padded position too: on a CPU both are
paid in full. Run item by item on its real tokens, attention costs the sum of the squared lengths
instead, for one small call per item and layer (`per_item_sdpa`). `EncoderPacking` then hands the
encoder's layers the batch's real tokens one after another in a single row, (1, tokens, hidden)
instead of (batch, width, hidden), and puts its output back into the padded layout for the pooler
and classification head, so padding costs those layers nothing either (a lone 16-pair forward of
the roberta-base-shaped stand-in on a CPU: about half the time; docs/benchmarks.md).

Padded rows' outputs are zeros here (transformers' SDPA gives them values that nothing reads): no
real token attends to a padded position, which the mask hides as a key, and a classifier reads real
positions only. `ModelRunner` turns this on only where its (batch, 1, 1, width) bool mask reaches
the attention, a prefix of ones per row (`broadcast_mask_attention`), and keeps the packing only
where a probe batch gives the same logits with it as without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "reward_per_item_sdpa"


def _is_runner_mask(attention_mask: torch.Tensor | None) -> bool:
    """The runner's (batch, 1, 1, width) bool padding mask (`ModelRunner._attention_mask`)."""
    return (
        attention_mask is not None
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[1:3] == (1, 1)
    )


def per_item_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: (batch, heads, width, head) in, (batch, width,
    heads, head) out; or, packed by `EncoderPacking`, one row that holds every item's tokens one
    after another. Anything but the runner's padding mask, or keys of other shapes than the queries
    (cross-attention, grouped heads), goes to transformers' own SDPA function unchanged."""
    runner_mask = _is_runner_mask(attention_mask)
    packed = runner_mask and query.shape[0] != attention_mask.shape[0]  # type: ignore[union-attr]
    if not runner_mask or query.shape != key.shape or dropout or kwargs.get("position_bias") is not None:
        if packed:  # transformers' SDPA would attend across items: never a silently wrong score
            name = type(module).__name__
            raise ValueError(f"packed tokens reached attention that per-item SDPA cannot run ({name})")
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert attention_mask is not None
    lengths = attention_mask[:, 0, 0, :].sum(dim=-1).tolist()
    batch, heads, width, head_size = query.shape
    if packed and (batch != 1 or width != sum(lengths)):
        raise ValueError(f"packed queries of shape {tuple(query.shape)} for items of {lengths} tokens")
    output = query.new_zeros(batch, width, heads, head_size)
    start = 0
    for row, length in enumerate(lengths):
        # Where this item's tokens are: a row of the padded batch, or a stretch of the packed row.
        rows, tokens = (
            (slice(0, 1), slice(start, start + length)) if packed else (slice(row, row + 1), slice(0, length))
        )
        start += length
        # 4D slices: SDPA's CPU flash kernel takes 4D inputs only (3D ones go to the math kernel).
        attended = F.scaled_dot_product_attention(
            query[rows, :, tokens], key[rows, :, tokens], value[rows, :, tokens], scale=scaling
        )
        output[rows, tokens] = attended.transpose(1, 2)
    return output, None


def use_per_item_attention(model: torch.nn.Module) -> None:
    """Make `model` (already on SDPA) run `per_item_sdpa` from its next forward on."""
    AttentionInterface.register(NAME, per_item_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)


class EncoderPacking:
    """Forward hooks on a model's encoder (`model.base_model.encoder`: BERT, RoBERTa, XLM-R, ELECTRA)
    that run its layers on the real tokens only, while `enabled`; the embeddings before it and the
    pooler and head after it see the padded batch as usual."""

    def __init__(self, encoder: torch.nn.Module) -> None:
        self.enabled = True
        encoder.register_forward_pre_hook(self._pack, with_kwargs=True)
        encoder.register_forward_hook(self._unpack, with_kwargs=True)

    @classmethod
    def attach(cls, model: torch.nn.Module) -> EncoderPacking | None:
        """Packing for `model`'s encoder, or None where it has none to pack."""
        encoder = getattr(model.base_model, "encoder", None)
        return cls(encoder) if isinstance(encoder, torch.nn.Module) else None

    def _pack(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        hidden, mask = _hidden_and_mask(args, kwargs)
        if not self.enabled or not _is_runner_mask(mask) or mask.shape[0] != hidden.shape[0]:
            return None
        keep = mask[:, 0, 0, :]
        if bool(keep.all()):  # no padding: nothing to leave out
            return None
        packed = hidden[keep][None]
        if args:
            return (packed, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": packed}

    def _unpack(self, module: torch.nn.Module, args: tuple, kwargs: dict, output: object) -> object:
        hidden, mask = _hidden_and_mask(args, kwargs)
        if not _is_runner_mask(mask) or mask.shape[0] == hidden.shape[0]:
            return None  # `_pack` left this forward as it was
        keep = mask[:, 0, 0, :]
        packed = output.last_hidden_state  # type: ignore[attr-defined]
        padded = packed.new_zeros(*keep.shape, packed.shape[-1])
        padded[keep] = packed[0]
        output.last_hidden_state = padded  # type: ignore[attr-defined]
        return output


def _hidden_and_mask(args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An encoder forward's hidden states and attention mask, whether passed by position or name."""
    hidden = args[0] if args else kwargs["hidden_states"]
    mask = kwargs["attention_mask"] if "attention_mask" in kwargs else (args[1] if len(args) > 1 else None)
    return hidden, mask
