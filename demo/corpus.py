"""A small synthetic corpus of harmless and hostile sentences, deterministic for a given seed."""

from __future__ import annotations

import random

HARMLESS = [
    "I like you.",
    "Thank you for your help.",
    "Have a lovely day.",
    "That is a kind thing to say.",
    "I am happy to help you.",
    "What a wonderful idea.",
    "You are very welcome here.",
    "I appreciate your patience.",
    "Let us work on this together.",
    "The garden looks beautiful today.",
    "Good luck with your exam.",
    "I enjoyed our talk.",
    "Please take care of yourself.",
    "We can find a good answer.",
    "Your work is great.",
    "It is nice to meet you.",
]
HOSTILE = [
    "You are terrible and i hate you.",
    "I hate you.",
    "You are stupid and worthless.",
    "Shut up, you idiot.",
    "Nobody wants you here, get lost.",
    "You are a disgusting loser.",
    "I despise people like you.",
    "You are pathetic and useless.",
    "Go away, you filthy creep.",
    "Everyone hates you, moron.",
    "You are the worst, you fool.",
    "I will never respect trash like you.",
]
FILLERS = ["", "Well, ", "Honestly, ", "Look, ", "Today ", "Again, "]


def labelled_sentences(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """`n` sentences with label 0 (nothate) or 1 (hate), balanced."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = i % 2
        pool = HOSTILE if label else HARMLESS
        text = rng.choice(FILLERS) + rng.choice(pool)
        if rng.random() < 0.3:
            text += " " + rng.choice(pool)
        out.append((text, label))
    return out


def tokenizer_corpus() -> list[str]:
    """Text for training the stand-in tokenizers: every sentence and some dialogue words."""
    extra = [
        "Human: Assistant: Summarize the following conversation. Summary:",
        "hello how are you what can i do for you today the a an is are was were",
        "please tell me about cooking travel music books weather sports history",
    ]
    return HARMLESS + HOSTILE + FILLERS + extra
