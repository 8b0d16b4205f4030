"""The service's /metrics page read as numbers, and waits on them instead of on the clock."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[str, float]:
    """Each sample of a Prometheus text page by its name and labels as written on the page, e.g.
    `reward_queue_depth{scorer="roberta-hate"}` (labels sorted by name)."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


def metric(text: str, name: str) -> float:
    """The sum of the samples of `name` (a sample name, or one with its labels), 0 if none."""
    values = samples(text)
    if "{" in name:
        return values.get(name, 0.0)
    return sum(v for key, v in values.items() if key == name or key.startswith(name + "{"))


def read_metrics(url: str, headers: dict[str, str] | None = None) -> str:
    return httpx.get(url + "/metrics", headers=headers, timeout=5).text


def wait_for_metric(url: str, name: str, at_least: float, timeout_s: float = 60.0) -> float:
    """Until `metric(name)` on the service at `url` is at least `at_least`; its value then."""
    deadline = time.monotonic() + timeout_s
    while (value := metric(read_metrics(url), name)) < at_least:
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} was {value}, not {at_least}, after {timeout_s:.0f} s")
        time.sleep(0.02)
    return value


def wait_for_enqueued_items(url: str, items: int, timeout_s: float = 60.0) -> None:
    """Until the engines have taken `items` items: those batched so far plus those still queued."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = read_metrics(url)
        if metric(text, "reward_batch_size_sum") + metric(text, "reward_queue_depth") >= items:
            return
        time.sleep(0.05)
    raise AssertionError(f"the engines did not take {items} items within {timeout_s} s")
