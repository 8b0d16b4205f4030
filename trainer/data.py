"""Training prompts: hh-rlhf dialogues turned into summarisation prompts (the reference pipeline),
or a dataset of prompts used as they are.

hh-rlhf rows (a `chosen` column): drop `rejected`, `chosen` -> `dialogue`, keep
100 < len(dialogue) <= 500 characters, wrap it in the summarisation instruction.
Prompt rows (a `prompt` column: a string, or a conversation as a list of `{"role", "content"}`
messages, TRL's two prompt formats): used as they are. A `prompt` column wins over `chosen`.
Both -> `messages` -> chat template (when the tokenizer has one) -> `prompt` text and `input_ids`
-> `train_test_split(test_size, seed)`. Prompts are not padded here: the trainers pad them on
the left at batch time.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

PROMPT_HEAD = "Summarize the following conversation."
PROMPT_TAIL = "Summary:"
LOCAL_FORMATS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
PROMPT_COLUMN = "prompt"


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


def load_source(dataset_name: str, split: str = "train", config: str | None = None) -> Dataset:
    """Load hh-rlhf rows (`chosen`) or prompt rows (`prompt`) from the hub or a local file/directory."""
    path = Path(dataset_name).expanduser()
    looks_local = path.exists() or path.suffix in LOCAL_FORMATS or dataset_name.startswith((".", "/", "~"))
    if looks_local:
        if not path.exists():
            raise DatasetError(f"dataset file or directory not found: {path}")
        builder, files = _local_files(path)
        if all(Path(f).stat().st_size == 0 for f in files):
            raise DatasetError(f"{path} is empty: no rows to train on")
        try:
            dataset = load_dataset(builder, data_files=files, split="train")
        except Exception as exc:  # datasets raises many types (bad JSON, StopIteration on odd files)
            if "corresponds to no data" in str(exc):  # `[]`: datasets finds no split at all
                raise DatasetError(f"dataset {dataset_name!r} has no rows") from exc
            raise DatasetError(f"could not read {path} as {builder}: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            dataset = load_dataset(dataset_name, config, split=split)
        except Exception as exc:  # datasets raises many types (not found, offline, bad split)
            raise DatasetError(
                f"could not load dataset {dataset_name!r} (split {split!r}) from the Hugging Face Hub: "
                f"{exc}. "
                "Pass a hub id or a local .json/.jsonl/.parquet file or directory."
            ) from exc
    if len(dataset) == 0:
        raise DatasetError(f"dataset {dataset_name!r} has no rows")
    if PROMPT_COLUMN not in dataset.column_names and "chosen" not in dataset.column_names:
        raise DatasetError(
            f"dataset {dataset_name!r} has no 'prompt' or 'chosen' column (columns: "
            f"{dataset.column_names}); expected prompts (a 'prompt' column) or hh-rlhf rows "
            "('chosen' dialogues)"
        )
    return dataset


def is_prompt_dataset(dataset: Dataset) -> bool:
    return PROMPT_COLUMN in dataset.column_names


def prepare_dialogues(dataset: Dataset, min_chars: int = 100, max_chars: int = 500) -> Dataset:
    """Drop `rejected`, rename `chosen` to `dialogue`, keep min_chars < len(dialogue) <= max_chars."""
    dropped = [c for c in dataset.column_names if c != "chosen"]
    dataset = dataset.remove_columns(dropped).rename_column("chosen", "dialogue")
    kept = dataset.filter(lambda row: min_chars < len(row["dialogue"]) <= max_chars)
    if len(kept) == 0:
        raise DatasetError(
            f"no dialogue of the {len(dataset)} rows has {min_chars} < length <= {max_chars} characters "
            "(--min_dialogue_chars, --max_dialogue_chars)"
        )
    return kept


def summary_messages(dialogue: str) -> list[dict[str, str]]:
    """The reference prompt for one hh-rlhf dialogue, as a one-message conversation."""
    return [{"role": "user", "content": f"{PROMPT_HEAD}\n\n{dialogue.strip()}\n\n{PROMPT_TAIL}"}]


def prompt_messages(prompt: str | list[dict[str, str]]) -> list[dict[str, str]]:
    """A dataset's `prompt` (plain text or a list of messages) as a conversation."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not prompt or not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in prompt):
        raise DatasetError(
            "a 'prompt' must be a string or a non-empty list of {'role': ..., 'content': ...} messages; "
            f"got {prompt!r:.200}"
        )
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


def render_prompt(messages: list[dict[str, str]], tokenizer: PreTrainedTokenizerBase) -> str:
    """The text the policy continues: the chat template when the tokenizer has one, else the text."""
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if len(messages) > 1:
        raise DatasetError(
            f"a prompt of {len(messages)} messages needs a tokenizer with a chat template; this "
            "tokenizer has none (use plain-text prompts, or a chat model)"
        )
    return messages[0]["content"]


def build_prompt(dialogue: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The reference prompt for an hh-rlhf dialogue, through the chat template when there is one."""
    return render_prompt(summary_messages(dialogue), tokenizer)


def tokenize_prompts(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_prompt_tokens: int) -> Dataset:
    """`messages` -> `prompt` and `input_ids`; prompts longer than `max_prompt_tokens` tokens are dropped."""

    def encode(row: dict) -> dict:
        prompt = render_prompt(row["messages"], tokenizer)
        # The chat template already holds any special tokens the model needs.
        ids = tokenizer(prompt, add_special_tokens=not tokenizer.chat_template)["input_ids"]
        return {"prompt": prompt, "input_ids": ids}

    encoded = dataset.map(encode)
    kept = encoded.filter(lambda row: len(row["input_ids"]) <= max_prompt_tokens)
    if len(kept) == 0:
        raise DatasetError(f"every prompt is longer than max_prompt_tokens={max_prompt_tokens}")
    return kept


def prepare_prompts(dataset: Dataset) -> Dataset:
    """Prompt rows -> `messages` (other columns dropped); empty prompts are refused, not trained on."""
    rows = dataset.select_columns([PROMPT_COLUMN])
    for index, prompt in enumerate(rows[PROMPT_COLUMN]):
        messages = prompt_messages(prompt)
        if not any(m["content"].strip() for m in messages):
            raise DatasetError(f"prompt {index} is empty: remove it or give it text")
    return rows.map(lambda row: {"messages": prompt_messages(row[PROMPT_COLUMN])}).remove_columns(
        [PROMPT_COLUMN]
    )


def usable_rows(source: Dataset, min_chars: int = 100, max_chars: int = 500) -> Dataset:
    """`messages` rows from prompt rows or hh-rlhf dialogues (filtered), before tokenization: what
    the preflight checks without a tokenizer. At least 2 are needed for a train/test split."""
    if is_prompt_dataset(source):
        rows = prepare_prompts(source)
    else:
        dialogues = prepare_dialogues(source, min_chars, max_chars)
        rows = dialogues.map(lambda row: {"messages": summary_messages(row["dialogue"])})
    if len(rows) < 2:
        raise DatasetError(f"only {len(rows)} usable prompt(s): need at least 2 to split train/test")
    return rows


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
    """The whole pipeline: `train` and `test` splits with `messages`, `prompt` and `input_ids`
    (and `dialogue` for hh-rlhf rows). The character bounds apply to hh-rlhf dialogues only."""
    rows = usable_rows(load_source(dataset_name, split, config), min_chars, max_chars)
    prompts = tokenize_prompts(rows, tokenizer, max_prompt_tokens)
    if len(prompts) < 2:
        raise DatasetError(f"only {len(prompts)} usable prompt(s): need at least 2 to split train/test")
    return prompts.train_test_split(test_size=test_size, seed=seed)
