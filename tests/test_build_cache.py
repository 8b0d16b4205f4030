"""The stand-in cache: a builder runs once per key, and the key follows its arguments and code."""

from __future__ import annotations

from pathlib import Path

import pytest

import demo.corpus
from harness import build_cache
from harness.metrics import metric

calls: list[dict[str, object]] = []


def write_model(out: Path, size: int = 1) -> Path:
    calls.append({"size": size})
    out.mkdir()
    (out / "weights").write_text("w" * size)
    return out


def test_a_builder_runs_once_per_arguments(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(build_cache.CACHE_ENV, str(tmp_path))
    calls.clear()
    first = build_cache.cached_build("m", write_model, size=3)
    again = build_cache.cached_build("m", write_model, size=3)
    other = build_cache.cached_build("m", write_model, size=4)
    assert first == again != other and len(calls) == 2
    assert (first / "weights").read_text() == "www"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left
    copy = build_cache.copy_of(first, tmp_path / "mine")
    assert (copy / "weights").read_text() == "www" and copy != first


def test_the_key_covers_the_builders_sources() -> None:
    alone = build_cache.build_key(write_model, (), {"size": 1})
    assert build_cache.build_key(write_model, (demo.corpus,), {"size": 1}) != alone
    assert build_cache.build_key(write_model, (), {"size": 2}) != alone


def test_metric_reads_one_labelled_sample_or_sums_a_name() -> None:
    page = (
        "# TYPE reward_queue_depth gauge\n"
        'reward_queue_depth{scorer="a"} 3.0\n'
        'reward_queue_depth{scorer="b"} 4.0\n'
    )
    assert metric(page, 'reward_queue_depth{scorer="b"}') == 4.0
    assert metric(page, "reward_queue_depth") == 7.0
    assert metric(page, "reward_missing_total") == 0.0
