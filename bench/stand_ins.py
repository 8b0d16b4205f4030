"""Locally built classifiers and natural-language texts for the benchmarks (no hub downloads).

Texts are English docstrings of the Python standard library (read with `ast`, nothing imported),
cut to a target number of tokens of the model's own tokenizer. Classifiers have the real model's
architecture and labels with random weights, in three sizes:

- tiny: the 2-layer, 32-wide stand-in of the tests and the demo;
- deep-narrow: 12 layers, 64 wide: many small ops and little arithmetic, which is how a GPU sees
  roberta-base, so per-op overheads (the GIL among them) show on a CPU;
- roberta-base: roberta-base's config (768 wide, 12 layers, 50,265-token vocabulary), with a
  byte-level BPE tokenizer trained on the docstrings.
"""

from __future__ import annotations

import argparse
import ast
import os
import random
from pathlib import Path

import torch
from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

import demo.corpus
import demo.tiny_models
from demo.tiny_models import build_tiny_roberta_classifier, roberta_tokenizer
from harness.build_cache import cached_build

ROBERTA_BASE_VOCAB = 50_265


# Service settings for steady-state figures: no standby engine, whose one-time import of PyTorch
# right after the service is ready (a core for about 5 s on the 2-core sandbox) would land in the
# first measurement, and whose memory (about 350 MB, fixed) would count as request growth.
STEADY_STATE_ENV = {"REWARD_ENGINE_STANDBY": "false"}


def docstring_corpus() -> list[str]:
    """Paragraphs of English prose from the standard library's docstrings, in a fixed order."""
    paragraphs: list[str] = []
    for path in sorted(Path(os.__file__).parent.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc:
                    paragraphs.extend(p.replace("\n", " ").strip() for p in doc.split("\n\n") if len(p) > 40)
    return paragraphs


def natural_texts(
    tokenizer: RobertaTokenizerFast, n: int, low: int = 60, high: int = 280, seed: int = 0
) -> list[str]:
    """`n` texts of `low`..`high` tokens (about 170 on average), cut from consecutive paragraphs."""
    words = " ".join(docstring_corpus()).split()
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        target = rng.randint(low, high)
        start = rng.randrange(len(words) - 4 * high)
        # Words are about 1.3 tokens; take enough, then trim to the target token count.
        ids = tokenizer(" ".join(words[start : start + 2 * target]), add_special_tokens=False)["input_ids"]
        texts.append(tokenizer.decode(ids[: target - 2]))
    return texts


STAND_IN_KINDS = ("tiny", "deep-narrow", "roberta-base")


def add_classifier_arguments(parser: argparse.ArgumentParser, stand_in: str) -> None:
    """--model, --stand-in (default `stand_in`) and --device, as every classifier benchmark takes them."""
    parser.add_argument("--model", help="classifier dir or hub id (default: build --stand-in locally)")
    parser.add_argument("--stand-in", default=stand_in, choices=STAND_IN_KINDS)
    parser.add_argument("--device", default="cpu")


def build_classifier(kind: str, out: Path | None = None) -> Path:
    """The `kind` stand-in: in `out` if given, else in the stand-in cache (`harness.build_cache`),
    built once per version of the code that builds it."""
    if out is None:
        return cached_build(f"bench-{kind}", _build, (demo.tiny_models, demo.corpus), kind=kind)
    return _build(out, kind)


def _build(out: Path, kind: str) -> Path:
    if kind == "tiny":
        return build_tiny_roberta_classifier(out, train_steps=0)
    if kind == "deep-narrow":
        return build_tiny_roberta_classifier(
            out, train_steps=0, layers=12, hidden=64, heads=4, intermediate=256
        )
    if kind == "roberta-base":
        return _build_roberta_base(out)
    raise ValueError(f"unknown stand-in {kind!r}: tiny, deep-narrow or roberta-base")


def _build_roberta_base(out: Path) -> Path:
    tokenizer = roberta_tokenizer(docstring_corpus(), ROBERTA_BASE_VOCAB)
    # roberta-base's own config; the labels of facebook/roberta-hate-speech-dynabench-r4-target.
    config = RobertaConfig(
        vocab_size=ROBERTA_BASE_VOCAB,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        max_position_embeddings=514,
        type_vocab_size=1,
        layer_norm_eps=1e-5,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        id2label={0: "nothate", 1: "hate"},
        label2id={"nothate": 0, "hate": 1},
    )
    torch.manual_seed(0)
    model = RobertaForSequenceClassification(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
