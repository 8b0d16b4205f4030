"""RobertaScorer below the HTTP layer: label lookup, out-of-memory splitting, loading errors."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from reward_service.batcher import BatchLimits
from reward_service.metrics import ServiceMetrics
from reward_service.scorers.base import ScoreOptions
from reward_service.scorers.roberta import RobertaScorer
from tests.reference_scoring import DirectScorer

LIMITS = BatchLimits(max_batch_tokens=4096, max_batch_items=64, max_wait_ms=1, queue_capacity=1000)


def loaded_scorer(model: Path, metrics: ServiceMetrics) -> RobertaScorer:
    scorer = RobertaScorer("roberta-hate", str(model), "cpu", "auto", LIMITS, metrics)
    scorer._load()
    return scorer


def test_out_of_memory_splits_the_batch_and_still_gives_every_score(tiny_roberta: Path) -> None:
    metrics = ServiceMetrics()
    scorer = loaded_scorer(tiny_roberta, metrics)
    texts = ["I like you.", "I hate you.", "Have a lovely day.", "Shut up, you idiot.", "Hello"]
    batch = scorer.tokenize(texts, "left").ids
    real_model = scorer._model

    class SmallMemoryModel(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            if input_ids.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_model(input_ids=input_ids, attention_mask=attention_mask)

    scorer._model = SmallMemoryModel()
    logits = scorer._forward(batch)
    direct = DirectScorer(tiny_roberta)
    assert [row[0] for row in logits] == pytest.approx([direct.nothate_logit(t) for t in texts], abs=1e-4)
    assert metrics.oom_splits.labels("roberta-hate")._value.get() >= 2


def test_a_single_item_that_does_not_fit_fails_instead_of_looping(tiny_roberta: Path) -> None:
    scorer = loaded_scorer(tiny_roberta, ServiceMetrics())

    class NoMemoryModel(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    scorer._model = NoMemoryModel()
    with pytest.raises(torch.cuda.OutOfMemoryError):
        scorer._forward(scorer.tokenize(["a", "b", "c"], "left").ids)


def test_a_model_without_a_nothate_label_is_refused(tiny_roberta: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta)
    model.config.id2label = {0: "positive", 1: "negative"}
    model.config.label2id = {"positive": 0, "negative": 1}
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(tmp_path)

    async def start() -> RobertaScorer:
        scorer = RobertaScorer("roberta-hate", str(tmp_path), "cpu", "auto", LIMITS, ServiceMetrics())
        await scorer.start()
        return scorer

    scorer = asyncio.run(start())
    info = scorer.info()
    assert info.state == "failed" and not info.ready
    assert "nothate" in (info.error or "") and "positive" in (info.error or "")


def test_cuda_device_without_cuda_is_a_clear_error(tiny_roberta: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    scorer = RobertaScorer("roberta-hate", str(tiny_roberta), "cuda", "auto", LIMITS, ServiceMetrics())
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        scorer._load()
    asyncio.run(scorer.start())
    assert scorer.info().state == "failed"
    with pytest.raises(Exception, match="not ready"):
        asyncio.run(scorer.score(["a"], ScoreOptions(truncation_side="left")))
