"""Score texts one at a time, in-process, without the service: the ground truth for the tests."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class DirectScorer:
    def __init__(self, model_dir: Path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()

    @torch.inference_mode()
    def logits_of_ids(self, ids: list[int]) -> list[float]:
        return self.model(input_ids=torch.tensor([ids])).logits[0].tolist()

    def nothate_logit(self, text: str) -> float:
        ids = self.tokenizer(text, truncation=True, max_length=512)["input_ids"]
        return self.logits_of_ids(ids)[0]
