"""The tests' tiny stand-in models (`demo.tiny_models`, `demo.tiny_policy`), through the build cache:
trained once per builder version, then copied or read back in milliseconds."""

from __future__ import annotations

import importlib
from pathlib import Path

import demo.corpus
import demo.tiny_models
from harness.build_cache import cached_build, copy_of


def tiny_roberta_classifier(**kwargs: object) -> Path:
    """`demo.tiny_models.build_tiny_roberta_classifier(out, **kwargs)`, cached (read-only: share it)."""
    return cached_build("roberta", demo.tiny_models.build_tiny_roberta_classifier, (demo.corpus,), **kwargs)


def build_tiny_policy(
    out_dir: str | Path, seed: int = 0, chat_template: bool = False, pretrain_steps: int = 0
) -> Path:
    """`demo.tiny_policy.build_tiny_policy` with the same arguments: a copy of the cached build."""
    # Imported here: the policy's pretraining needs the trainer extra (`datasets`).
    tiny_policy = importlib.import_module("demo.tiny_policy")
    sources = (
        demo.tiny_models,
        demo.corpus,
        importlib.import_module("demo.hh_data"),
        importlib.import_module("trainer.data"),
    )
    kwargs = {"seed": seed, "chat_template": chat_template, "pretrain_steps": pretrain_steps}
    return copy_of(cached_build("policy", tiny_policy.build_tiny_policy, sources, **kwargs), out_dir)
