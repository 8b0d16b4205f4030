"""A small hh-rlhf-shaped JSONL file (`chosen` / `rejected` dialogues), deterministic for a seed.

Dialogues look like hh-rlhf's ("\\n\\nHuman: ...\\n\\nAssistant: ..."), and most are 100-500 characters
long so that the reference filter keeps them; a few are shorter or longer on purpose.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

QUESTIONS = [
    "How do I bake bread at home?",
    "What is a good book about travel?",
    "Can you tell me about the weather today?",
    "How can I learn to play music?",
    "What sports are good for kids?",
    "Tell me about the history of cooking.",
    "How do I help a friend who is sad?",
    "What should I do on a rainy day?",
    "Why is my neighbour so rude to me?",
    "How do I say thank you to a teacher?",
]
GOOD_ANSWERS = [
    "I am happy to help you. Start with flour, water and a little salt, and let it rest.",
    "Thank you for asking. A walk in the garden or a good book is a lovely way to spend the day.",
    "What a wonderful idea. Let us work on this together, one small step at a time.",
    "Please take care of yourself. Talking to a friend you trust is a kind thing to do.",
    "You are very welcome. Music is easier with a little practice every day.",
]
BAD_ANSWERS = [
    "I hate questions like this, you idiot.",
    "Shut up, nobody wants you here.",
    "You are stupid and worthless, figure it out yourself.",
]
FOLLOW_UPS = ["Thanks, anything else?", "Can you say more?", "Is that true?", "Why?"]


def _dialogue(rng: random.Random, turns: int, answers: list[str]) -> str:
    parts = []
    for i in range(turns):
        question = rng.choice(QUESTIONS) if i == 0 else rng.choice(FOLLOW_UPS)
        parts.append(f"\n\nHuman: {question}\n\nAssistant: {rng.choice(answers)}")
    return "".join(parts)


def hh_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` rows; about 5% too short and 5% too long for the 100 < len <= 500 filter."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 20 == 0:
            chosen = "\n\nHuman: Hi\n\nAssistant: Hello."  # too short
        elif i % 20 == 10:
            chosen = _dialogue(rng, 8, GOOD_ANSWERS)  # too long
        else:
            chosen = _dialogue(rng, rng.choice([1, 1, 2]), GOOD_ANSWERS)
        rejected = _dialogue(rng, 1, BAD_ANSWERS)
        rows.append({"chosen": chosen, "rejected": rejected})
    return rows


def write_hh_jsonl(path: str | Path, n: int = 200, seed: int = 0) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for row in hh_rows(n, seed):
            fh.write(json.dumps(row) + "\n")
    return out


def dialogue_corpus(n: int = 200, seed: int = 0) -> list[str]:
    """Text for the tiny policy's tokenizer, so that prompts do not fall apart into bytes."""
    return [row["chosen"] for row in hh_rows(n, seed)]
