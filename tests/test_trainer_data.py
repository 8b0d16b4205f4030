"""The prompt pipeline on local files: hh-rlhf filter bounds, prompt format, plain and conversational
prompt datasets, split sizes, no leakage, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("datasets")

from datasets import Dataset  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from trainer.data import (  # noqa: E402
    PROMPT_HEAD,
    PROMPT_TAIL,
    DatasetError,
    build_prompt,
    build_splits,
    load_source,
    prepare_dialogues,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    return AutoTokenizer.from_pretrained(build_tiny_policy(tmp_path_factory.mktemp("policy")))


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_filter_keeps_exactly_100_lt_len_le_500() -> None:
    lengths = [99, 100, 101, 250, 499, 500, 501, 800]
    rows = Dataset.from_list([{"chosen": "x" * n, "rejected": "r"} for n in lengths])
    kept = prepare_dialogues(rows)
    assert kept.column_names == ["dialogue"]
    assert sorted(len(d) for d in kept["dialogue"]) == [101, 250, 499, 500]


def test_prompt_format_plain_and_chat_template(tokenizer) -> None:
    dialogue = "\n\nHuman: Hi there\n\nAssistant: Hello."
    assert (
        build_prompt(dialogue, tokenizer)
        == f"{PROMPT_HEAD}\n\nHuman: Hi there\n\nAssistant: Hello.\n\n{PROMPT_TAIL}"
    )
    from demo.tiny_policy import CHAT_TEMPLATE

    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        templated = build_prompt(dialogue, tokenizer)
    finally:
        tokenizer.chat_template = None
    assert templated.startswith("<|user|>\n" + PROMPT_HEAD) and templated.endswith("<|assistant|>\n")


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet", "dir"])
def test_splits_sizes_and_no_leakage(tmp_path: Path, tokenizer, suffix: str) -> None:
    jsonl = write_hh_jsonl(tmp_path / "hh.jsonl", n=200, seed=3)
    source: Path = jsonl
    if suffix == ".parquet":
        source = tmp_path / "hh.parquet"
        Dataset.from_json(str(jsonl)).to_parquet(str(source))
    elif suffix == "dir":
        source = tmp_path / "data"
        source.mkdir()
        jsonl.rename(source / "part-0.jsonl")
    splits = build_splits(str(source), tokenizer, test_size=0.2, seed=7)
    rows = (
        [json.loads(line) for line in (tmp_path / "hh.jsonl").read_text().splitlines()]
        if suffix != "dir"
        else []
    )
    kept = len(splits["train"]) + len(splits["test"])
    if rows:
        assert kept == sum(100 < len(r["chosen"]) <= 500 for r in rows)
    assert kept >= 170  # the demo file is made so that the filter keeps most rows
    assert len(splits["test"]) == pytest.approx(0.2 * kept, abs=1)
    test = splits["test"]["prompt"]
    assert all(p.startswith(PROMPT_HEAD) and p.endswith(PROMPT_TAIL) for p in splits["train"]["prompt"])
    assert all(tokenizer.decode(ids) == p for p, ids in zip(test, splits["test"]["input_ids"], strict=True))
    # Same seed, same split: evaluation after training sees exactly the held-out prompts.
    again = build_splits(str(source), tokenizer, test_size=0.2, seed=7)
    assert again["test"]["prompt"] == splits["test"]["prompt"]


def test_rows_are_split_not_duplicated(tmp_path: Path, tokenizer) -> None:
    unique = [{"chosen": f"\n\nHuman: question number {i} " + "x" * 120, "rejected": "no"} for i in range(50)]
    splits = build_splits(str(_write_jsonl(tmp_path / "u.jsonl", unique)), tokenizer, seed=1)
    train, test = set(splits["train"]["dialogue"]), set(splits["test"]["dialogue"])
    assert not train & test  # no held-out dialogue is trained on
    assert len(train) + len(test) == 50 and len(test) == 10


def test_clear_errors(tmp_path: Path, tokenizer) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_source(str(tmp_path / "missing.jsonl"))
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "hello", "label": 1}])
    with pytest.raises(DatasetError, match="no 'prompt' or 'chosen' column.*'text'"):
        load_source(str(bad))
    short = _write_jsonl(tmp_path / "short.jsonl", [{"chosen": "too short", "rejected": "x"}] * 3)
    with pytest.raises(DatasetError, match="no dialogue of the 3 rows"):
        build_splits(str(short), tokenizer)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DatasetError, match=r"no \.json, \.jsonl or \.parquet file"):
        load_source(str(empty_dir))


def test_plain_prompt_dataset_is_used_as_it_is(tmp_path: Path, tokenizer) -> None:
    # Any length is kept (the character bounds are hh-rlhf's); other columns are ignored.
    prompts = [f"Write a kind note to friend number {i}." for i in range(20)] + ["Hi"]
    rows = [{"prompt": p, "id": i} for i, p in enumerate(prompts)]
    splits = build_splits(str(_write_jsonl(tmp_path / "p.jsonl", rows)), tokenizer, test_size=0.25, seed=0)
    got = list(splits["train"]["prompt"]) + list(splits["test"]["prompt"])
    assert sorted(got) == sorted(prompts)
    assert len(splits["test"]) == 6
    assert "dialogue" not in splits["train"].column_names
    ids = splits["test"]["input_ids"][0]
    assert tokenizer.decode(ids) == splits["test"]["prompt"][0]


def test_conversational_prompts_go_through_the_chat_template(tmp_path: Path, tokenizer) -> None:
    from demo.tiny_policy import CHAT_TEMPLATE

    conversation = [
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Say something nice."},
    ]
    path = _write_jsonl(tmp_path / "c.jsonl", [{"prompt": conversation}] * 4)
    with pytest.raises(DatasetError, match="needs a tokenizer with a chat template"):
        build_splits(str(path), tokenizer)
    tokenizer.chat_template = CHAT_TEMPLATE
    try:
        splits = build_splits(str(path), tokenizer, test_size=0.5)
    finally:
        tokenizer.chat_template = None
    prompt = splits["train"]["prompt"][0]
    assert prompt.startswith("<|user|>\nHello there.") and prompt.endswith("<|assistant|>\n")
    assert "Say something nice." in prompt


def test_prompt_column_errors(tmp_path: Path, tokenizer) -> None:
    empty = _write_jsonl(tmp_path / "e.jsonl", [{"prompt": "fine"}, {"prompt": "  "}, {"prompt": "ok"}])
    with pytest.raises(DatasetError, match="prompt 1 is empty"):
        build_splits(str(empty), tokenizer)
    malformed = _write_jsonl(tmp_path / "m.jsonl", [{"prompt": [{"text": "no role"}]}] * 3)
    with pytest.raises(DatasetError, match="list of .*'role'"):
        build_splits(str(malformed), tokenizer)
