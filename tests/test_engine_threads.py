"""A CPU engine leaves a core to the front end; a GPU engine and an operator's OMP_NUM_THREADS are
left alone."""

from __future__ import annotations

import os

import pytest

from reward_service.engine.core import cpu_threads
from reward_service.engine.protocol import EngineConfig


def config(device: str) -> EngineConfig:
    return EngineConfig(
        scorer="s",
        address="ipc:///tmp/x.sock",
        model_path="m",
        device=device,
        dtype="auto",
        max_batch_tokens=1024,
        max_batch_items=8,
        max_wait_ms=0,
        queue_capacity=16,
    )


def test_a_cpu_engine_takes_every_core_but_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(os.sched_getaffinity(0))
    assert cpu_threads(config("cpu")) == max(1, cores - 1)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert cpu_threads(config("cpu")) == 1


def test_omp_num_threads_and_gpus_are_left_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    assert cpu_threads(config("cpu")) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert cpu_threads(config("cuda:0")) is None
