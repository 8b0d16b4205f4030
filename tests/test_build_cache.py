"""The stand-in cache: a builder runs once per key, and the key follows its arguments and code."""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import time
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


def write_slowly(out: Path, counter: str) -> Path:
    with open(counter, "a") as log:
        log.write("built\n")
    time.sleep(0.5)  # long enough for the other process to ask for the same build meanwhile
    out.mkdir()
    return out


def _build_after(barrier: multiprocessing.synchronize.Barrier, cache: str, counter: str) -> None:
    import os

    os.environ[build_cache.CACHE_ENV] = cache
    barrier.wait()
    build_cache.cached_build("m", write_slowly, counter=counter)


def test_two_processes_asking_for_one_build_at_once_build_it_once(tmp_path: Path) -> None:
    counter = str(tmp_path / "builds.log")
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(2)
    workers = [
        context.Process(target=_build_after, args=(barrier, str(tmp_path / "cache"), counter))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert Path(counter).read_text() == "built\n"  # the second waited for the first's build


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
