"""What a front end needs of an engine's model to tokenize for it: read once in the engine.

The engine has transformers loaded anyway; reading the tokenizer and config there lets a front-end
process run on the `tokenizers` backend alone (no PyTorch, no transformers: about 3 s and 200 MB
less per `--workers` process). The front end gets the card with the engine's ready status.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoTokenizer, PretrainedConfig

from reward_service.engine.protocol import ModelCard
from reward_service.model_source import check_model_source

# Models whose position table has two slots reserved for the padding offset.
PADDING_OFFSET_MODELS = {"roberta", "xlm-roberta"}


def read_model_card(model_path: str, config: PretrainedConfig | None = None) -> ModelCard:
    """The labels (in id order), the window and the fast tokenizer of the model at `model_path`;
    raises ValueError if it has no fast tokenizer."""
    check_model_source(model_path)
    config = config or AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if not tokenizer.is_fast:
        raise ValueError(f"{model_path} has no fast tokenizer (tokenizer.json); one is required")
    window = config.max_position_embeddings
    if config.model_type in PADDING_OFFSET_MODELS:
        window -= 2
    id2label = {int(i): str(label) for i, label in config.id2label.items()}
    return ModelCard(
        labels=[id2label[i] for i in sorted(id2label)],
        max_tokens=min(window, tokenizer.model_max_length),
        tokenizer_json=tokenizer.backend_tokenizer.to_str(),
    )
