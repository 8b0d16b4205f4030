"""A tiny causal policy of a real architecture (GPT-2), tokenizer trained on the fly.

With `pretrain_steps` > 0 it is briefly trained to answer the summarisation prompts with a mix of
harmless and hostile sentences (about half each), so that, like an untuned model, it is sometimes
toxic and PPO has something to fix; with 0 its weights stay random.

TRL's PPO treats it exactly like a hub model: `AutoModelForCausalLM` for the policy (and its frozen
reference copy), `AutoModelForSequenceClassification(num_labels=1)` from the same directory for the
value model. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from demo.corpus import labelled_sentences, tokenizer_corpus
from demo.hh_data import dialogue_corpus
from demo.tiny_models import train_byte_bpe

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# A minimal ChatML-like template, for exercising the chat-template prompt path.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_policy_tokenizer(chat_template: bool = False) -> PreTrainedTokenizerFast:
    backend = train_byte_bpe(
        tokenizer_corpus() + dialogue_corpus(), vocab_size=600, special_tokens=[EOS, PAD]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS,
        eos_token=EOS,
        unk_token=EOS,
        pad_token=PAD,
        padding_side="left",  # PPO generates after the prompt: prompts are padded on the left
        model_max_length=1024,
    )
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_policy(
    out_dir: str | Path, seed: int = 0, chat_template: bool = False, pretrain_steps: int = 0
) -> Path:
    """Save a tiny GPT-2 and its tokenizer to `out_dir` (see the module docstring for `pretrain_steps`)."""
    out = Path(out_dir)
    torch.manual_seed(seed)
    tokenizer = tiny_policy_tokenizer(chat_template)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=1024,
        n_embd=64,
        n_layer=2,
        n_head=2,
        # GPT-2's tanh GELU as one fused op: the same function as its default "gelu_new" (within
        # 3e-7) without the handful of elementwise ops, and their backward, that make "gelu_new"
        # a tenth of this model's training time on a CPU.
        activation_function="gelu_pytorch_tanh",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if pretrain_steps > 0:
        _pretrain(model, tokenizer, pretrain_steps, seed)
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _pretrain(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, steps: int, seed: int) -> None:
    # Imported here: the data module needs `datasets`, which only the trainer extra installs.
    from trainer.data import build_prompt

    prompts = [build_prompt(d, tokenizer) for d in dialogue_corpus(64, seed + 1)]
    replies = [text for text, _ in labelled_sentences(256, seed + 1)]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3)
    tokenizer.padding_side = "right"
    model.train()
    for _ in range(steps):
        p = torch.randint(len(prompts), (16,), generator=generator).tolist()
        r = torch.randint(len(replies), (16,), generator=generator).tolist()
        texts = [f"{prompts[i]} {replies[j]}{EOS}" for i, j in zip(p, r, strict=True)]
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    tokenizer.padding_side = "left"
