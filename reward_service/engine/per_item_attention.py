"""Attention over each item's own tokens, for a bidirectional encoder on a CPU.

In a padded batch every row's attention costs the batch's width squared, its padding included; on
a CPU attention is most of a small model's forward (60% of the tiny stand-in's for a lone 16-text
request). Run item by item on its real tokens, attention costs the sum of the squared lengths
instead, for one small call per item and layer. The other layers still see the padded batch.

Padded rows' outputs are zeros here (transformers' SDPA gives them values that nothing reads): no
real token attends to a padded position, which the mask hides as a key, and a classifier reads real
positions only. `ModelRunner` turns this on only where its (batch, 1, 1, width) bool mask reaches
the attention, a prefix of ones per row (`broadcast_mask_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

NAME = "reward_per_item_sdpa"


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
    heads, head) out. Anything but the runner's padding mask, or keys of other shapes than the
    queries (cross-attention, grouped heads), goes to transformers' own SDPA function unchanged."""
    runner_mask = (
        attention_mask is not None
        and attention_mask.dtype == torch.bool
        and attention_mask.dim() == 4
        and attention_mask.shape[1:3] == (1, 1)
    )
    if not runner_mask or query.shape != key.shape or dropout or kwargs.get("position_bias") is not None:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    assert attention_mask is not None
    batch, heads, width, head_size = query.shape
    output = query.new_zeros(batch, width, heads, head_size)
    for row, length in enumerate(attention_mask[:, 0, 0, :].sum(dim=-1).tolist()):
        # 4D slices: SDPA's CPU flash kernel takes 4D inputs only (3D ones go to the math kernel).
        one = slice(row, row + 1)
        attended = F.scaled_dot_product_attention(
            query[one, :, :length], key[one, :, :length], value[one, :, :length], scale=scaling
        )
        output[row, :length] = attended[0].transpose(0, 1)
    return output, None


def use_per_item_attention(model: torch.nn.Module) -> None:
    """Make `model` (already on SDPA) run `per_item_sdpa` from its next forward on."""
    AttentionInterface.register(NAME, per_item_sdpa)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
