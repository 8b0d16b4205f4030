"""A reward a policy with random weights can learn: the "kind words" classifier.

The tests' usual classifier (`tiny_roberta`) only learned that hostile sentences are hate, so a
random policy's gibberish already scores near its ceiling and there is nothing left to learn
(docs/trainer.md, "Why GRPO/RLOO did not learn on a random-init policy"). This one is the same
architecture, labels and tokenizer, trained on the text such a policy writes: random tokens of the
tiny policy's vocabulary are `hate`; the same with one to three kind words among them are `nothate`.
Scores are nearly two-valued (about -3.6 without a kind word, +2.2 with one, +3.4 with two), and
a random policy's 16-token answers average about -0.8 held out, so it starts low with a clear way
up, which only a trainer whose rewards belong to their own completions finds.
"""

from __future__ import annotations

import importlib
import random
from functools import cache
from pathlib import Path

import demo.corpus
import demo.tiny_models
from harness.build_cache import cached_build

# One token each in the tiny policy's vocabulary (with the leading space byte-level BPE marks).
KIND_WORDS = (" kind", " thank", " help", " lovely", " wonderful", " happy", " welcome", " care", " good")


@cache
def _policy_vocabulary() -> tuple[list[int], list[int], object]:
    """(ids of ordinary tokens, ids of the kind words, the tokenizer) of the tiny policy."""
    tokenizer = importlib.import_module("demo.tiny_policy").tiny_policy_tokenizer()
    kind = [tokenizer.convert_tokens_to_ids(word.replace(" ", "Ġ")) for word in KIND_WORDS]
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special and i not in kind]
    return ordinary, kind, tokenizer


def kind_words_sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """`n` texts like a random policy's answers, balanced: label 0 (nothate) with kind words among
    the random tokens, 1 (hate) without."""
    ordinary, kind, tokenizer = _policy_vocabulary()
    rng = random.Random(seed)
    out = []
    for i in range(n):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(2, 16))]
        label = i % 2
        if label == 0:
            for _ in range(rng.randint(1, 3)):
                ids.insert(rng.randrange(len(ids) + 1), rng.choice(kind))
        out.append((tokenizer.decode(ids), label))  # type: ignore[attr-defined]
    return out


def build_kind_words_classifier(out_dir: str | Path, train_steps: int = 300, seed: int = 0) -> Path:
    return demo.tiny_models.build_tiny_roberta_classifier(
        out_dir, train_steps, seed, sentences=kind_words_sentences
    )


def kind_words_classifier(train_steps: int = 300) -> Path:
    """The classifier, cached (read-only: share it)."""
    sources = (demo.tiny_models, demo.corpus, importlib.import_module("demo.tiny_policy"))
    return cached_build("kind-words", build_kind_words_classifier, sources, train_steps=train_steps)
