"""hh-rlhf dialogues turned into summarisation prompts, as in the reference pipeline.

load (hub id or local JSON/JSONL/parquet) -> drop `rejected`, `chosen` -> `dialogue` -> keep
100 < len(dialogue) <= 500 characters -> prompt -> tokenise -> `train_test_split(test_size, seed)`.
Tokenised prompts are not padded here: PPO's collator pads them on the left at batch time.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

PROMPT_HEAD = "Summarize the following conversation."
PROMPT_TAIL = "Summary:"
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class DatasetError(ValueError):
    """The dataset is missing, has the wrong columns, or leaves nothing after filtering."""


def _local_files(path: Path) -> tuple[str, list[str]]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix in LOCAL_FORMATS)
    if not files:
        raise DatasetError(f"no .json, .jsonl or .parquet file under {path}")
    kinds = {LOCAL_FORMATS.get(p.suffix) for p in files}
    if None in kinds:
        raise DatasetError(f"{path}: unsupported file type (use .json, .jsonl or .parquet)")
    if len(kinds) > 1:
        raise DatasetError(f"{path} mixes JSON and parquet files; keep one format per directory")
    return kinds.pop() or "json", [str(p) for p in files]


def load_dialogues(dataset_name: str, split: str = "train", config: str | None = None) -> Dataset:
    """Load hh-rlhf-shaped rows (`chosen`, optionally `rejected`) from the hub or a local file/directory."""
    path = Path(dataset_name).expanduser()
    looks_local = path.exists() or path.suffix in LOCAL_FORMATS or dataset_name.startswith((".", "/", "~"))
    if looks_local:
        if not path.exists():
            raise DatasetError(f"dataset file or directory not found: {path}")
        builder, files = _local_files(path)
        dataset = load_dataset(builder, data_files=files, split="train")
    else:
        try:
            dataset = load_dataset(dataset_name, config, split=split)
        except Exception as exc:  # datasets raises many types (not found, offline, bad split)
            raise DatasetError(
                f"could not load dataset {dataset_name!r} (split {split!r}) from the Hugging Face Hub: "
                f"{exc}. "
                "Pass a hub id or a local .json/.jsonl/.parquet file or directory."
            ) from exc
    if "chosen" not in dataset.column_names:
        raise DatasetError(
            f"dataset {dataset_name!r} has no 'chosen' column (columns: {dataset.column_names}); "
            "expected hh-rlhf rows with 'chosen' and 'rejected' dialogues"
        )
    return dataset


def prepare_dialogues(dataset: Dataset, min_chars: int = 100, max_chars: int = 500) -> Dataset:
    """Drop `rejected`, rename `chosen` to `dialogue`, keep min_chars < len(dialogue) <= max_chars."""
    dropped = [c for c in dataset.column_names if c != "chosen"]
    dataset = dataset.remove_columns(dropped).rename_column("chosen", "dialogue")
    kept = dataset.filter(lambda row: min_chars < len(row["dialogue"]) <= max_chars)
    if len(kept) == 0:
        raise DatasetError(
            f"no dialogue of the {len(dataset)} rows has {min_chars} < length <= {max_chars} characters"
        )
    return kept


def build_prompt(dialogue: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The reference prompt, through the tokenizer's chat template when it has one."""
    text = f"{PROMPT_HEAD}\n\n{dialogue.strip()}\n\n{PROMPT_TAIL}"
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
    return text


def tokenize_prompts(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int) -> Dataset:
    """Add `prompt` and `input_ids`; prompts longer than `max_prompt_tokens` tokens are dropped."""

    def encode(row: dict) -> dict:
        prompt = build_prompt(row["dialogue"], tokenizer)
        # The chat template already holds any special tokens the model needs.
        ids = tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]
        return {"prompt": prompt, "input_ids": ids}

    encoded = dataset.map(encode)
    kept = encoded.filter(lambda row: len(row["input_ids"]) <= max_prompt_tokens)
    if len(kept) == 0:
        raise DatasetError(f"every prompt is longer than max_prompt_tokens={max_prompt_tokens}")
    return kept


def build_splits(
    dataset_name: str,
    tokenizer: PreTrainedTokenizerBase,
    *,
    split: str = "train",
    config: str | None = None,
    min_chars: int = 100,
    max_chars: int = 500,
    max_prompt_tokens: int = 1024,
    test_size: float = 0.2,
    seed: int = 42,
) -> DatasetDict:
    """The whole pipeline: `train` and `test` splits with `dialogue`, `prompt` and `input_ids`."""
    dialogues = prepare_dialogues(load_dialogues(dataset_name, split, config), min_chars, max_chars)
    prompts = tokenize_prompts(dialogues, tokenizer, max_prompt_tokens)
    if len(prompts) < 2:
        raise DatasetError(f"only {len(prompts)} usable prompt(s): need at least 2 to split train/test")
    return prompts.train_test_split(test_size=test_size, seed=seed)
