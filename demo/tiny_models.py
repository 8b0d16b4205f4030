"""Build a tiny RoBERTa hate-speech classifier with the real model's label layout.

Same architecture (`RobertaForSequenceClassification`), same labels (`0: nothate`, `1: hate`),
same 512-token window; only the sizes are small and the tokenizer is trained on the fly, so the
service runs the exact code path it runs with `facebook/roberta-hate-speech-dynabench-r4-target`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer, Tokenizer
from tokenizers.processors import RobertaProcessing
from transformers import RobertaConfig, RobertaForSequenceClassification, RobertaTokenizerFast

from demo.corpus import labelled_sentences, tokenizer_corpus

ROBERTA_SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def train_byte_bpe(corpus: list[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    """A byte-level BPE tokenizer (as RoBERTa and GPT-2 use) trained on `corpus`."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus * 4, vocab_size=vocab_size, min_frequency=1, special_tokens=special_tokens)
    return bpe._tokenizer


def tiny_roberta_tokenizer() -> RobertaTokenizerFast:
    return roberta_tokenizer(tokenizer_corpus(), vocab_size=400)


def roberta_tokenizer(corpus: list[str], vocab_size: int) -> RobertaTokenizerFast:
    """A RoBERTa-style tokenizer (byte-level BPE, RoBERTa's special tokens) trained on `corpus`."""
    backend = train_byte_bpe(corpus, vocab_size=vocab_size, special_tokens=ROBERTA_SPECIAL)
    # RoBERTa wraps every sequence as <s> ... </s>.
    backend.post_processor = RobertaProcessing(
        ("</s>", backend.token_to_id("</s>")), ("<s>", backend.token_to_id("<s>"))
    )
    return RobertaTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def build_tiny_roberta_classifier(
    out_dir: str | Path,
    train_steps: int = 150,
    seed: int = 0,
    *,
    layers: int = 2,
    hidden: int = 32,
    heads: int = 2,
    intermediate: int = 64,
    sentences: Callable[[int, int], list[tuple[str, int]]] = labelled_sentences,
) -> Path:
    """Save a small classifier to `out_dir`; with `train_steps` > 0 it learns `sentences(256, seed)`'s
    labels (by default hostile -> hate, a low nothate logit).

    The sizes default to the tiny stand-in of tests and the demo; benchmarks and slow-model tests
    pass larger ones (same architecture, labels and tokenizer).
    """
    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = tiny_roberta_tokenizer()
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=514,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        id2label={0: "nothate", 1: "hate"},
        label2id={"nothate": 0, "hate": 1},
    )
    model = RobertaForSequenceClassification(config)
    if train_steps > 0:
        _train(model, tokenizer, sentences(256, seed), train_steps, seed)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _train(
    model: RobertaForSequenceClassification,
    tokenizer: RobertaTokenizerFast,
    data: list[tuple[str, int]],
    steps: int,
    seed: int,
) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        picks = torch.randint(len(data), (32,), generator=generator).tolist()
        batch = tokenizer([data[i][0] for i in picks], padding=True, return_tensors="pt")
        labels = torch.tensor([data[i][1] for i in picks])
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
