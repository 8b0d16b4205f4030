"""Class probabilities from logits, as vLLM's classify pooler and TEI's predict compute them by default:
softmax over the classes, or a sigmoid when the model has a single output."""

from __future__ import annotations

import math


def softmax(logits: list[float]) -> list[float]:
    top = max(logits)
    exps = [math.exp(x - top) for x in logits]
    total = sum(exps)
    return [e / total for e in exps]


def sigmoid(logits: list[float]) -> list[float]:
    # Split by sign so that exp() never overflows.
    return [1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x)) for x in logits]


def default_activation(logits: list[float]) -> list[float]:
    return sigmoid(logits) if len(logits) == 1 else softmax(logits)
