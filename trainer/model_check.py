"""Is a model path usable, read from its config.json alone (no weights load): it exists, it is a
model folder, and its architecture is one the trainers can train. A wrong path or an unsupported
model then costs a second and one line, not a page of `from_pretrained` traceback."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from huggingface_hub import constants, try_to_load_from_cache
from transformers import AutoConfig
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
)

TRUTHY = {"1", "ON", "YES", "TRUE"}
Role = Literal["policy", "value"]


class ModelPathError(ValueError):
    """The message is the one line the user sees."""


def hub_offline() -> bool:
    """HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE as set now (huggingface_hub reads them at import)."""
    env = {os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    return constants.HF_HUB_OFFLINE or bool(env & TRUTHY)


def _looks_local(name: str) -> bool:
    # A hub id is "name" or "owner/name"; anything else is meant as a folder.
    return Path(name).expanduser().exists() or name.startswith((".", "/", "~")) or name.count("/") > 1


def check_model_path(
    flag: str,
    name: str,
    revision: str | None = None,
    role: Role = "policy",
    trust_remote_code: bool = False,
) -> None:
    """Raise ModelPathError saying what is wrong with `name` (given as `flag`) as a `role` model."""
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelPathError(f"{flag} {name}: no such directory (and not a hub id)")
        if not (path / "config.json").is_file():
            what = (
                "a LoRA adapter, not a model" if (path / "adapter_config.json").exists() else "no config.json"
            )
            raise ModelPathError(f"{flag} {name}: not a model folder ({what})")
    elif hub_offline() and not isinstance(
        try_to_load_from_cache(name, "config.json", revision=revision), str
    ):
        raise ModelPathError(
            f"{flag} {name}: not in the local Hugging Face cache, and HF_HUB_OFFLINE=1 forbids downloading "
            "it (download it first, unset HF_HUB_OFFLINE, or pass a local folder)"
        )
    try:
        config = AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for bad configs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelPathError(f"{flag} {name}: cannot read its config ({first})") from exc
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        raise ModelPathError(
            f"{flag} {name}: a sequence-to-sequence (encoder-decoder) model ({model_type}) is not supported: "
            "PPO, GRPO and RLOO here train a causal (decoder-only) LM that continues the prompt; use one "
            "such as Qwen/Qwen2.5-0.5B-Instruct"
        )
    if getattr(config, "auto_map", None):  # custom code decides its own classes
        return
    supported = (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        if role == "policy"
        else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    )
    if model_type not in supported:
        kind = (
            "causal LM (AutoModelForCausalLM)"
            if role == "policy"
            else "value model (AutoModelForSequenceClassification)"
        )
        raise ModelPathError(f"{flag} {name}: model type {model_type!r} cannot be loaded as a {kind}")
    _check_head(flag, name, config, role)


def _check_head(flag: str, name: str, config: object, role: Role) -> None:
    """A folder saved with a classification head (a reward model, say) is not a policy, and is a
    critic only with one output: the model type alone does not say so (RoBERTa has a causal-LM class
    too), its `architectures` and label count do."""
    architectures = getattr(config, "architectures", None) or []
    classifier = next((a for a in architectures if a.endswith("ForSequenceClassification")), None)
    if classifier is None:
        return
    labels = int(getattr(config, "num_labels", 0) or 0)
    if role == "policy":
        raise ModelPathError(
            f"{flag} {name}: a sequence classifier ({classifier}, {labels} labels), not a causal LM: "
            "the policy is the language model to train (e.g. Qwen/Qwen2.5-0.5B-Instruct); the reward "
            "model is the service's"
        )
    if labels != 1:
        raise ModelPathError(
            f"{flag} {name}: a sequence classifier with {labels} labels ({classifier}); PPO's critic "
            "has one output: pass a causal LM (the critic starts from its backbone) or a one-label model"
        )
