"""The scoring engine: fair scheduling, the model runner, and the engine process's faults.

Scheduler and runner are tested through their public methods; the process-level behaviour (an
engine that dies, several engines, a model that cannot load) through real HTTP against the app.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import msgspec
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from harness.engine_gate import EngineGate
from harness.live_server import serving
from harness.reference_scoring import DirectScorer
from harness.service import LONG_TEXT, service_settings
from reward_service.app import create_app
from reward_service.engine import per_item_attention
from reward_service.engine.admission import MovingRate
from reward_service.engine.core import batch_padding_limit
from reward_service.engine.model_card import read_model_card
from reward_service.engine.model_runner import ModelRunner, load_classifier
from reward_service.engine.protocol import CPU_BATCH_PADDING_TOKENS, EngineConfig
from reward_service.engine.scheduler import FairScheduler, QueuedRequest
from reward_service.metrics import ServiceMetrics
from reward_service.scorers import Scorer, build_registry
from reward_service.scorers.base import ScoreOptions
from reward_service.scorers.tokenization import WindowTokenizer


def queued(request_id: int, lengths: list[int], client: bytes = b"c") -> QueuedRequest:
    return QueuedRequest(client, request_id, np.arange(sum(lengths), dtype=np.int32), lengths)


def test_a_small_request_is_not_held_behind_a_big_one() -> None:
    scheduler = FairScheduler(max_batch_tokens=64 * 100, max_batch_items=64, queue_capacity=10_000)
    assert scheduler.add(queued(1, [100] * 1024))  # one trainer's big request, first in line
    assert scheduler.add(queued(2, [100] * 16, client=b"other"))
    first_window = [item for batch in scheduler.next_window() for item in batch]
    small = [item for item in first_window if item.request.request_id == 2]
    assert len(small) == 16  # every item of the small request runs in the first window
    assert len(first_window) == 4 * 64
    assert scheduler.waiting_items == 1024 + 16 - len(first_window)


def test_round_robin_resumes_where_the_last_window_stopped() -> None:
    scheduler = FairScheduler(max_batch_tokens=10_000, max_batch_items=1, queue_capacity=10_000)
    for request_id in range(8):
        scheduler.add(queued(request_id, [10, 10]))
    order = [item.request.request_id for _ in range(4) for batch in scheduler.next_window() for item in batch]
    # Windows of 4 items: requests 0-3, then 4-7, then each one's second item in the same order.
    assert order == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7]


def test_batches_fit_the_token_budget_and_are_sorted_by_length() -> None:
    scheduler = FairScheduler(max_batch_tokens=40, max_batch_items=8, queue_capacity=100)
    lengths = [9, 1, 20, 3, 3, 8, 1, 2, 15, 4]
    scheduler.add(queued(1, lengths))
    batches = scheduler.next_window()
    assert sorted(item.index for batch in batches for item in batch) == list(range(len(lengths)))
    for batch in batches:
        assert max(i.length for i in batch) * len(batch) <= 40 or len(batch) == 1
        assert [i.length for i in batch] == sorted(i.length for i in batch)


def test_a_padding_limit_puts_longer_items_in_another_batch() -> None:
    scheduler = FairScheduler(
        max_batch_tokens=10_000, max_batch_items=64, queue_capacity=100, max_batch_padding=20
    )
    lengths = [100, 3, 5, 98, 4, 60, 99, 6, 61]
    scheduler.add(queued(1, lengths))
    batches = scheduler.next_window()
    assert [[i.length for i in batch] for batch in batches] == [[3, 4, 5, 6], [60, 61], [98, 99, 100]]
    # Without a limit the same window is one batch (its padded size fits the token budget).
    unlimited = FairScheduler(max_batch_tokens=10_000, max_batch_items=64, queue_capacity=100)
    unlimited.add(queued(1, lengths))
    assert [len(batch) for batch in unlimited.next_window()] == [len(lengths)]


def test_the_padding_limit_is_the_setting_else_by_device() -> None:
    config = EngineConfig("roberta-hate", "ipc:///x", "m", "cpu", "auto", 16_384, 256, 0.0, 1024)
    assert batch_padding_limit(config, torch.device("cpu")) == CPU_BATCH_PADDING_TOKENS
    assert batch_padding_limit(config, torch.device("cuda")) is None
    tuned = msgspec.structs.replace(config, max_batch_padding_tokens=0)
    assert batch_padding_limit(tuned, torch.device("cuda")) == 0
    assert service_settings(Path("m"), max_batch_padding_tokens=64).max_batch_padding_tokens == 64


def test_the_item_cap_limits_a_batch_when_the_token_budget_would_allow_more() -> None:
    scheduler = FairScheduler(max_batch_tokens=100_000, max_batch_items=3, queue_capacity=100)
    scheduler.add(queued(1, [5] * 10))
    batches = scheduler.next_window()
    assert [len(batch) for batch in batches] == [3, 3, 3, 1]
    assert sorted(item.index for batch in batches for item in batch) == list(range(10))


def test_a_full_queue_refuses_a_request_whole_and_a_cancelled_one_leaves_it() -> None:
    scheduler = FairScheduler(max_batch_tokens=1000, max_batch_items=8, queue_capacity=10)
    assert scheduler.add(queued(1, [5] * 8))
    assert not scheduler.add(queued(2, [5] * 3))
    assert scheduler.waiting_items == 8
    scheduler.cancel((b"c", 1))
    assert scheduler.waiting_items == 0 and scheduler.waiting_tokens == 0
    assert scheduler.next_window() == []
    assert scheduler.add(queued(3, [5] * 3))


def runner_for(model_dir: Path, model: torch.nn.Module | None = None, on_split=lambda: None) -> ModelRunner:
    real = load_classifier(str(model_dir), torch.device("cpu"), torch.float32)
    return ModelRunner(model or real, torch.device("cpu"), real.config.pad_token_id, 4096, on_split)


def test_runner_pads_by_length_and_matches_one_at_a_time_scoring(tiny_roberta: Path) -> None:
    direct = DirectScorer(tiny_roberta)
    texts = ["I like you.", "You are terrible and i hate you.", "Have a lovely day, friend. " * 9]
    ids = [direct.tokenizer(t)["input_ids"] for t in texts]
    runner = runner_for(tiny_roberta)
    logits = runner.collect(runner.launch([np.array(i, dtype=np.int32) for i in ids]))
    for row, item in zip(logits.tolist(), ids, strict=True):
        assert row == pytest.approx(direct.logits_of_ids(item), abs=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_padding_mask_matches_one_at_a_time_scoring_for_each_attention(
    tiny_roberta: Path, attention: str
) -> None:
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta, attn_implementation=attention)
    assert model.config._attn_implementation == attention
    direct = DirectScorer(tiny_roberta)
    # Lengths from 3 to about 120 tokens: most rows of the batch are mostly padding.
    texts = ["Hi", "You are terrible and i hate you.", "Have a lovely day, friend. " * 20, "ok then"]
    ids = [np.array(direct.tokenizer(t)["input_ids"], dtype=np.int32) for t in texts]
    runner = ModelRunner(model.eval(), torch.device("cpu"), model.config.pad_token_id, 4096)
    logits = runner.collect(runner.launch(ids))
    for row, item in zip(logits.tolist(), ids, strict=True):
        assert row == pytest.approx(direct.logits_of_ids(item.tolist()), abs=1e-5)


def test_a_cpu_encoder_runs_attention_per_item_with_the_padded_batchs_logits(tiny_roberta: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    direct = DirectScorer(tiny_roberta)
    texts = ["Hi", "Have a lovely day, friend. " * 20, "You are terrible and i hate you.", "ok", "a b " * 40]
    ids = [np.array(direct.tokenizer(t)["input_ids"], dtype=np.int32) for t in texts]
    logits = {}
    # (per_item_attention, pack_tokens): the runner's choice on a CPU (attention per item and the
    # other layers on the real tokens), attention per item alone, and the padded batch throughout.
    for per_item, pack in ((None, True), (True, False), (False, True)):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta).eval()
        runner = ModelRunner(
            model,
            torch.device("cpu"),
            model.config.pad_token_id,
            4096,
            per_item_attention=per_item,
            pack_tokens=pack,
        )
        logits[per_item, pack] = runner.collect(runner.launch(ids))
        assert (model.config._attn_implementation == per_item_attention.NAME) is (per_item is not False)
        assert (runner.packing is not None) is (per_item is None)
    for row, item in zip(logits[None, True].tolist(), ids, strict=True):
        assert row == pytest.approx(direct.logits_of_ids(item.tolist()), abs=1e-5)
    for other in (logits[True, False], logits[False, True]):
        assert logits[None, True].tolist() == [pytest.approx(row, abs=1e-5) for row in other.tolist()]


class _LayoutReadingLayer(torch.nn.Module):
    """An encoder layer's stand-in that reads the batch's layout, as a layer with a position bias of
    its own might: its output depends on the width of the rows it is given."""

    def __init__(self, layer: torch.nn.Module, raises: bool) -> None:
        super().__init__()
        self.layer = layer
        self.raises = raises

    def forward(self, hidden: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.raises and hidden.shape[0] == 1:
            raise RuntimeError("this layer takes padded batches only")
        output = self.layer(hidden, *args, **kwargs)
        output[..., 0] += hidden.shape[1] / 10  # one feature only: a layer norm does not undo it
        return output


@pytest.mark.parametrize("raises", [False, True], ids=["other-logits", "fails"])
def test_an_encoder_that_packing_would_score_wrongly_runs_unpacked(tiny_roberta: Path, raises: bool) -> None:
    from transformers import AutoModelForSequenceClassification

    direct = DirectScorer(tiny_roberta)
    texts = ["Hi", "Have a lovely day, friend. " * 8, "ok then"]
    ids = [np.array(direct.tokenizer(t)["input_ids"], dtype=np.int32) for t in texts]
    logits = []
    for pack in (True, False):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta).eval()
        layers = model.roberta.encoder.layer
        layers[0] = _LayoutReadingLayer(layers[0], raises)
        runner = ModelRunner(model, torch.device("cpu"), model.config.pad_token_id, 4096, pack_tokens=pack)
        assert runner.packing is None
        logits.append(runner.collect(runner.launch(ids)))
    # The packing's check turned it off: the same logits as a runner that never packed.
    assert logits[0].tolist() == logits[1].tolist()


def _random_classifier(architecture: str, attention: str) -> torch.nn.Module:
    """A 2-layer classifier of `architecture` with random weights, pad token id 1."""
    import transformers

    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    sizes["num_key_value_heads"] = 2  # read by the decoders only
    config_class = getattr(transformers, f"{architecture}Config")
    model_class = getattr(transformers, f"{architecture}ForSequenceClassification")
    torch.manual_seed(0)
    model = model_class(config_class(vocab_size=64, pad_token_id=1, num_labels=2, **sizes))
    model.set_attn_implementation(attention)
    return model.eval()


# Decoder reward models (causal attention) and DeBERTa-v2 (attention code of its own) must get
# the 2D mask: a (batch, 1, 1, width) one drops Llama's causal mask and gives DeBERTa-v2 NaN.
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("architecture", ["Llama", "Qwen2", "DebertaV2", "Bert"])
def test_batched_scoring_matches_one_at_a_time_for_other_architectures(
    architecture: str, attention: str
) -> None:
    model = _random_classifier(architecture, attention)
    ids = [np.arange(5, 5 + length, dtype=np.int32) for length in (9, 3, 6)]
    runner = ModelRunner(model, torch.device("cpu"), 1, 4096)
    logits = runner.collect(runner.launch(ids))
    if architecture != "Bert":  # per-item attention is for encoders on transformers' attention only
        assert model.config._attn_implementation != per_item_attention.NAME
    # A BERT encoder on SDPA runs packed: its pooler reads the first token of the padded layout.
    assert (runner.packing is not None) is (architecture == "Bert" and attention == "sdpa")
    with torch.inference_mode():
        alone = [model(input_ids=torch.from_numpy(item).long()[None]).logits[0].tolist() for item in ids]
    for row, expected in zip(logits.tolist(), alone, strict=True):
        assert row == pytest.approx(expected, abs=1e-5)


# Many decoder reward models (Llama 3's, for one) have no pad token: transformers refuses a batch of
# more than one for them, and finds each row's score at its last token that is not the pad id.
@pytest.mark.parametrize("architecture", ["Llama", "Qwen2"])
def test_a_decoder_with_no_pad_token_scores_a_batch_as_one_at_a_time(architecture: str) -> None:
    model = _random_classifier(architecture, "sdpa")
    model.config.pad_token_id = None
    # Rows that end in ids 0, 1 and 2: whichever of them a runner padded with, it would hide that
    # row's last token and score the row at an earlier one.
    ids = [np.array(row, dtype=np.int32) for row in ([7, 9, 11, 0], [5, 1], [8, 6, 12, 30, 2], [9, 3, 1])]
    runner = ModelRunner(model, torch.device("cpu"), None, 4096)
    batched = runner.collect(runner.launch(ids))
    with torch.inference_mode():
        model.config.pad_token_id = None
        alone = [model(input_ids=torch.from_numpy(item).long()[None]).logits[0].tolist() for item in ids]
    for row, expected in zip(batched.tolist(), alone, strict=True):
        assert row == pytest.approx(expected, abs=1e-5)


def test_out_of_memory_splits_the_batch_and_still_gives_every_score(tiny_roberta: Path) -> None:
    real = load_classifier(str(tiny_roberta), torch.device("cpu"), torch.float32)

    class SmallMemoryModel(torch.nn.Module):
        config = real.config

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            if input_ids.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real(input_ids=input_ids, attention_mask=attention_mask)

    splits: list[int] = []
    runner = runner_for(tiny_roberta, SmallMemoryModel(), lambda: splits.append(1))
    direct = DirectScorer(tiny_roberta)
    texts = ["I like you.", "I hate you.", "Have a lovely day.", "Shut up, you idiot.", "Hello"]
    ids = [np.array(direct.tokenizer(t)["input_ids"], dtype=np.int32) for t in texts]
    logits = runner.collect(runner.launch(ids))
    assert logits[:, 0].tolist() == pytest.approx([direct.nothate_logit(t) for t in texts], abs=1e-4)
    assert len(splits) >= 2


def test_a_single_item_that_does_not_fit_fails_instead_of_looping(tiny_roberta: Path) -> None:
    real = load_classifier(str(tiny_roberta), torch.device("cpu"), torch.float32)

    class NoMemoryModel(torch.nn.Module):
        config = real.config

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    runner = runner_for(tiny_roberta, NoMemoryModel())
    with pytest.raises(torch.cuda.OutOfMemoryError):
        runner.launch([np.array([0, 5, 2], dtype=np.int32)] * 3)


def test_a_model_without_a_nothate_label_is_refused(tiny_roberta: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta)
    model.config.id2label = {0: "positive", 1: "negative"}
    model.config.label2id = {"positive": 0, "negative": 1}
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(tmp_path)

    async def start() -> Scorer:
        registry = build_registry(service_settings(tmp_path), ServiceMetrics())
        await registry.start()
        await registry.close()
        return registry.get(None)

    info = asyncio.run(start()).info()
    assert info.state == "failed" and not info.ready
    assert "nothate" in (info.error or "") and "positive" in (info.error or "")


def test_a_non_finite_logit_is_a_clear_error_and_never_a_score(tiny_roberta: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_roberta)
    with torch.no_grad():  # what broken weights or an fp16 overflow give
        model.classifier.out_proj.bias.copy_(torch.tensor([float("nan"), float("inf")]))
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_roberta).save_pretrained(tmp_path)
    with serving(create_app(service_settings(tmp_path))) as server:
        texts = ["a much longer text than the others", "hello", "you", "a", "b", "c", "d"]
        score = httpx.post(server.url + "/score", json={"texts": texts}, timeout=30)
        reward = httpx.post(server.url + "/get_reward", json={"query": ["hello"]}, timeout=30)
        metrics = httpx.get(server.url + "/metrics").text
    assert score.status_code == 500, score.text
    # The batch's bad inputs in index order (the engine meets them in length order, the longest
    # text, input 0, last): the first five with their logits, then how many more.
    assert score.json()["detail"].startswith(
        "the model gave non-finite logits for inputs 0 [nan, inf], 1 [nan, inf], 2 [nan, inf], "
        "3 [nan, inf], 4 [nan, inf] and 2 more; no score is made up"
    ), score.json()["detail"]
    assert reward.status_code == 500 and "non-finite" in reward.text
    assert 'route="/score",scorer="roberta-hate",status="500"} 1.0' in metrics


def test_cuda_device_without_cuda_is_a_clear_error(tiny_roberta: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with serving(create_app(service_settings(tiny_roberta, device="cuda")), ready_path=None) as server:
        deadline = time.monotonic() + 60
        while (info := httpx.get(server.url + "/scorers").json()["scorers"][0])["state"] == "loading":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert info["state"] == "failed" and "CUDA is not available" in info["error"]
        response = httpx.post(server.url + "/score", json={"texts": ["a"]})
        assert response.status_code == 503 and "CUDA is not available" in response.json()["detail"]


def wait_until(condition, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_dead_engine_gives_503_then_is_restarted_and_serving_resumes(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = EngineGate(tmp_path / "gate").install(monkeypatch)
    app = create_app(service_settings(tiny_roberta, retry_after_s=3, engine_heartbeat_timeout_s=2.0))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        assert supervisor.heartbeat_timeout_s == 2.0  # the setting, not a constant of the supervisor
        [pid] = supervisor.pids()
        with ThreadPoolExecutor(max_workers=1) as pool:
            gate.close()
            in_flight = pool.submit(
                httpx.post, server.url + "/score", json={"texts": [LONG_TEXT] * 16}, timeout=60
            )
            gate.wait_held(1)  # the engine is inside the batch
            os.kill(pid, signal.SIGKILL)  # a device fault, the OOM killer, a segfault...
            gate.open()
            answer = in_flight.result()
        # In-flight work fails cleanly and retryably; never a 500, never a made-up score.
        assert answer.status_code == 503 and answer.headers["retry-after"] == "3"
        assert "scores" not in answer.json()
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        [new_pid] = supervisor.pids()
        assert new_pid != pid and supervisor.restarts() == 1
        texts = ["I like you.", "I hate you."]
        direct = DirectScorer(tiny_roberta)
        served = httpx.post(server.url + "/score", json={"texts": texts}).json()["scores"]
        assert served == pytest.approx([direct.nothate_logit(t) for t in texts], abs=1e-4)


def test_a_standby_engine_replaces_a_dead_one_and_a_new_standby_follows(tiny_roberta: Path) -> None:
    app = create_app(service_settings(tiny_roberta, engine_standby=True))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        [pid] = supervisor.pids()
        wait_until(lambda: supervisor.standby_pid() is not None)  # started once the engine is ready
        standby = supervisor.standby_pid()
        assert standby != pid
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: supervisor.pids() == [standby])  # the waiting process became the engine
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        texts = ["I like you.", "I hate you."]
        direct = DirectScorer(tiny_roberta)
        served = httpx.post(server.url + "/score", json={"texts": texts}).json()["scores"]
        assert served == pytest.approx([direct.nothate_logit(t) for t in texts], abs=1e-4)
        wait_until(lambda: supervisor.standby_pid() not in (None, standby))  # the next one waits
        second = supervisor.standby_pid()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)  # stopping the service ends the standby too, not left behind


def test_a_standby_no_longer_needed_before_it_is_ready_exits_0_without_a_traceback(
    tiny_roberta: Path,
) -> None:
    # As when the service stops while its standby is still importing: nobody reads its stdout.
    standby = subprocess.Popen(
        [sys.executable, "-m", "reward_service.engine", "--standby", str(tiny_roberta)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert standby.stdout is not None
    standby.stdout.close()
    _, stderr = standby.communicate(timeout=120)
    assert standby.returncode == 0 and b"Traceback" not in stderr and b"Error" not in stderr, stderr


def test_readiness_is_503_while_the_only_engine_is_down(tiny_roberta: Path) -> None:
    app = create_app(service_settings(tiny_roberta))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        os.kill(supervisor.pids()[0], signal.SIGKILL)
        # The restarted engine needs a few seconds to load; meanwhile nothing may route to it.
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 503, timeout_s=10)
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200)
        assert httpx.post(server.url + "/score", json={"texts": ["a"]}).status_code == 200


def test_a_frozen_engine_is_noticed_killed_and_replaced(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = EngineGate(tmp_path / "gate").install(monkeypatch)
    app = create_app(service_settings(tiny_roberta, retry_after_s=3, engine_heartbeat_timeout_s=2.0))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        assert supervisor.heartbeat_timeout_s == 2.0  # the setting, not a constant of the supervisor
        [pid] = supervisor.pids()
        with ThreadPoolExecutor(max_workers=1) as pool:
            gate.close()
            # The client would wait 120 s: the answer must come from the heartbeat, not the deadline.
            in_flight = pool.submit(
                httpx.post,
                server.url + "/score",
                json={"texts": [LONG_TEXT] * 16},
                headers={"X-Reward-Timeout-Ms": "120000"},
                timeout=130,
            )
            gate.wait_held(1)  # the engine is inside the batch
            os.kill(pid, signal.SIGSTOP)  # alive to the kernel, but answers nothing
            gate.open()  # for its replacement; the stopped one cannot move
            try:
                wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 503, timeout_s=30)
                scorers = httpx.get(server.url + "/scorers").json()["scorers"][0]
                assert scorers["state"] != "ready"
                answer = in_flight.result()
            finally:
                if supervisor.pids() == [pid]:
                    os.kill(pid, signal.SIGKILL)
        assert answer.status_code == 503 and answer.headers["retry-after"] == "3"
        assert "scores" not in answer.json()
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, timeout_s=60)
        [new_pid] = supervisor.pids()
        assert new_pid != pid and supervisor.restarts() == 1
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the frozen one was killed and reaped, not left behind
        assert httpx.post(server.url + "/score", json={"texts": ["I like you."]}).status_code == 200


def test_an_engine_frozen_while_it_starts_is_killed_and_replaced(tiny_roberta: Path) -> None:
    # Frozen while it still imports (no socket bound yet, so no heartbeat could go unanswered):
    # without the start limit it was never noticed and the scorer stayed "loading" for good.
    # 8 s: under two test workers on a loaded 2-core machine the replacement's imports once took
    # over 4 s, and it was killed in turn (two restarts where one was due).
    settings = service_settings(tiny_roberta, engine_start_timeout_s=8.0, engine_standby=False)
    app = create_app(settings)
    with serving(app, ready_path=None) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        [pid] = supervisor.pids()
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            wait_until(lambda: supervisor.pids() != [pid], timeout_s=30)
        finally:
            if supervisor.pids() == [pid]:
                os.kill(pid, signal.SIGKILL)
        assert time.monotonic() - frozen_at >= 2.0  # not before it could have answered
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # killed and reaped
        wait_until(lambda: httpx.get(server.url + "/readyz").status_code == 200, timeout_s=90)
        assert supervisor.restarts() == 1
        assert httpx.post(server.url + "/score", json={"texts": ["I like you."]}).status_code == 200


def test_a_watcher_paused_past_the_heartbeat_timeout_does_not_kill_a_healthy_engine(
    tiny_roberta: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A starved front end (CPU contention) deschedules the supervisor's watcher thread: it sends
    # no beats meanwhile, so the engine's silence is the watcher's own pause, not a freeze. Under
    # two test workers on a loaded 2-core machine this once killed a healthy engine ("answered no
    # heartbeat for 3.8s") and the next requests got 503 "loading".
    app = create_app(service_settings(tiny_roberta, engine_heartbeat_timeout_s=1.0))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        [pid] = supervisor.pids()
        wait_until(lambda: supervisor._engines[0].answered is not None)
        check, paused = supervisor._check, threading.Event()

        def paused_once(engine: object) -> None:
            if not paused.is_set():
                paused.set()
                time.sleep(2.5)  # the watcher, descheduled past the timeout
            check(engine)

        monkeypatch.setattr(supervisor, "_check", paused_once)
        wait_until(paused.is_set)
        time.sleep(4.0)  # the pause, then several beats answered
        assert supervisor.pids() == [pid] and supervisor.restarts() == 0
        assert httpx.post(server.url + "/score", json={"texts": ["I like you."]}).status_code == 200


def test_a_busy_engine_answers_heartbeats_while_a_batch_runs(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zmq

    from reward_service.engine import protocol

    gate = EngineGate(tmp_path / "gate").install(monkeypatch)
    app = create_app(service_settings(tiny_roberta))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        [address] = supervisor.addresses
        context = zmq.Context()
        socket = context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.connect(protocol.heartbeat_address(address))
        replies: list[protocol.HeartbeatReply] = []
        try:
            with ThreadPoolExecutor(max_workers=1) as pool:
                gate.close()
                scoring = pool.submit(
                    httpx.post, server.url + "/score", json={"texts": [LONG_TEXT] * 32}, timeout=120
                )
                gate.wait_held(1)  # the busy loop is inside the batch until the gate opens
                sequence = 0
                deadline = time.monotonic() + 30
                while not any(reply.busy_s > 0.05 for reply in replies):
                    assert time.monotonic() < deadline, replies
                    sequence += 1
                    socket.send(protocol.encode(protocol.Heartbeat(sequence)))
                    if socket.poll(100):
                        replies.append(protocol.decode_heartbeat_reply(socket.recv()))
                gate.open()
                assert scoring.result().status_code == 200
        finally:
            gate.open()
            socket.close()
            context.term()
        # Answered from inside a batch (the busy loop was in a step), not only between batches.
        assert {reply.pid for reply in replies} == set(supervisor.pids())
        assert supervisor.restarts() == 0


def test_two_engines_share_the_work_and_one_dying_leaves_the_other_serving(tiny_roberta: Path) -> None:
    app = create_app(service_settings(tiny_roberta, devices=["cpu", "cpu"]))
    with serving(app) as server:
        supervisor = app.state.registry.engines.supervisor("roberta-hate")
        # Ready as soon as one engine is; /scorers lists each engine's device once it has reported.
        wait_until(lambda: httpx.get(server.url + "/scorers").json()["scorers"][0]["device"] == "cpu,cpu")
        texts = [f"Thank you, friend number {i}." for i in range(32)]
        direct = DirectScorer(tiny_roberta)
        expected = [direct.nothate_logit(t) for t in texts]
        with ThreadPoolExecutor(max_workers=8) as pool:
            answers = list(pool.map(lambda t: httpx.post(server.url + "/score", json={"texts": [t]}), texts))
        refused = [a.text for a in answers if a.status_code != 200]
        assert [a.status_code for a in answers] == [200] * len(texts), refused
        assert [a.json()["scores"][0] for a in answers] == pytest.approx(expected, abs=1e-4)
        first, _ = supervisor.pids()
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: supervisor.pids()[0] != first, timeout_s=10)
        time.sleep(0.2)
        # One engine is enough: the service stays ready and answers from the other one.
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert httpx.post(server.url + "/score", json={"texts": texts[:2]}).json()["scores"] == pytest.approx(
            expected[:2], abs=1e-4
        )


def test_scores_through_the_engine_do_not_depend_on_batch_mates(tiny_roberta: Path) -> None:
    async def main() -> tuple[list[float], list[list[float]]]:
        registry = build_registry(service_settings(tiny_roberta), ServiceMetrics())
        scorer = registry.get(None)
        await registry.start()
        try:
            while not scorer.ready:
                await asyncio.sleep(0.05)
            texts = [f"Have a lovely day number {i}. " * (i % 7 + 1) for i in range(40)]
            options = ScoreOptions(truncation_side="left")
            together = (await scorer.score(texts, options)).scores
            alone = await asyncio.gather(*(scorer.score([t], options) for t in texts))
            return together, [a.scores for a in alone]
        finally:
            await registry.close()

    together, alone = asyncio.run(main())
    assert together == pytest.approx([a[0] for a in alone], abs=1e-5)


TEXTS = ["Have a lovely day.", "You are kind.", "Thanks for the help!", "What a nice dog."]


def test_a_full_batch_runs_at_once_however_long_the_batching_window(tiny_roberta: Path) -> None:
    """REWARD_MAX_WAIT_MS lets an idle engine wait for more items; once a whole batch of
    REWARD_MAX_BATCH_ITEMS is waiting, nothing more can join it, so it runs without waiting."""
    window_s = 600.0

    async def main() -> tuple[list[float], list[list[float]]]:
        settings = service_settings(tiny_roberta, max_wait_ms=window_s * 1000, max_batch_items=4)
        registry = build_registry(settings, ServiceMetrics())
        scorer = registry.get(None)
        await registry.start()
        try:
            while not scorer.ready:
                await asyncio.sleep(0.05)
            options = ScoreOptions(truncation_side="left")
            # Far less than the window: only a batch that did not wait it out is answered in time.
            whole = await asyncio.wait_for(scorer.score(TEXTS[:4], options), timeout=window_s / 10)
            halves = await asyncio.wait_for(
                asyncio.gather(scorer.score(TEXTS[:2], options), scorer.score(TEXTS[2:4], options)),
                timeout=window_s / 10,
            )
            return whole.scores, [half.scores for half in halves]
        finally:
            await registry.close()

    whole, halves = asyncio.run(main())
    assert halves[0] + halves[1] == pytest.approx(whole, abs=1e-5)


def test_several_front_end_workers_feed_one_engine_and_metrics_add_up(
    tiny_roberta: Path, tmp_path: Path
) -> None:
    from demo import run as demo_run
    from harness.live_server import free_port

    port = free_port()
    log = tmp_path / "service.log"
    process = demo_run.start_service(tiny_roberta, port, log, {"REWARD_WORKERS": "2"})
    url = f"http://127.0.0.1:{port}"
    try:
        demo_run.wait_ready(url, process, timeout_s=90)
        # Each worker reports its own readiness and the kernel gives each new connection to either:
        # 40 ready probes in a row leave a worker still starting a 2**-40 chance (6 once let one by).
        wait_until(lambda: all(httpx.get(url + "/readyz").status_code == 200 for _ in range(40)))
        texts = [f"Thank you, friend number {i}." for i in range(24)]
        direct = DirectScorer(tiny_roberta)
        with ThreadPoolExecutor(max_workers=6) as pool:
            answers = list(
                pool.map(lambda t: httpx.post(url + "/score", json={"texts": [t]}, timeout=30), texts)
            )
        refused = [a.text for a in answers if a.status_code != 200]
        assert [a.status_code for a in answers] == [200] * len(texts), refused
        assert [a.json()["scores"][0] for a in answers] == pytest.approx(
            [direct.nothate_logit(t) for t in texts], abs=1e-4
        )
        # Whichever worker answers the scrape, it reports every worker's requests and the engine's batches.
        for _ in range(4):
            metrics = httpx.get(url + "/metrics").text
            requests = [line for line in metrics.splitlines() if line.startswith("reward_requests_total{")]
            assert sum(float(line.split()[-1]) for line in requests) == 24
            batched = [line for line in metrics.splitlines() if line.startswith("reward_batch_size_sum{")]
            assert float(batched[0].split()[-1]) == 24
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_long_texts_are_cut_before_tokenizing_with_the_same_ids_and_count(tiny_roberta: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    card = read_model_card(str(tiny_roberta))  # as the engine sends it to the front end
    tokenizer = WindowTokenizer(card.tokenizer_json, card.max_tokens)
    whole = Tokenizer.from_str(AutoTokenizer.from_pretrained(tiny_roberta).backend_tokenizer.to_str())
    whole.no_padding()
    texts = [
        "You are kind. " * 900,  # far past the window
        "x" * 12_000,  # one giant word
        "Thank you for your help, friend! " * 40,  # about the window's size
        "Have a lovely day.",
        "ab " * 3000 + "😀" * 2000,
    ]
    for side in ("left", "right"):
        whole.enable_truncation(tokenizer.max_tokens, direction=side)
        expected = whole.encode_batch(texts)
        tokenized = tokenizer.tokenize(texts, side)
        assert tokenized.ids == [e.ids for e in expected]
        assert tokenized.truncated == sum(1 for e in expected if e.overflowing)


def test_admission_estimates_a_fair_share_finish_and_refuses_what_cannot_finish() -> None:
    from reward_service.engine.admission import Admission, Queued, finish_s

    # Round-robin: a 100-token request behind one of 1,000 waits for 100 of its tokens, not 1,000.
    assert finish_s(100, [1000], tokens_per_s=100.0) == pytest.approx(2.0)
    admission = Admission()
    # No rate measured yet: no evidence that anything cannot finish, so everything is taken.
    assert admission.refusal(50_000, 1.0, []) is None
    assert admission.refusal(5_000, 1.0, [Queued(400_000, 10.0)]) is None
    admission.observe(tokens=1000, seconds=1.0)  # 1,000 tokens/s
    assert admission.refusal(500, 1.0, []) is None
    assert "past its deadline" in (admission.refusal(5_000, 2.0, []) or "")
    assert admission.refusal(5_000, None, []) is None  # no deadline: never refused for time
    # On time alone (5 s of work, 6 s left) but not with a newcomer taking half the engine.
    assert "already admitted" in (admission.refusal(5_000, 60.0, [Queued(5_000, 6.0)]) or "")
    # An admitted request that is late anyway is no reason to refuse the next one.
    assert admission.refusal(5_000, 60.0, [Queued(5_000, 1.0)]) is None


@settings(max_examples=300, deadline=None)
@given(
    tokens=st.integers(1, 50_000),
    budget_s=st.none() | st.floats(0.001, 120),
    queued=st.lists(st.tuples(st.integers(1, 50_000), st.none() | st.floats(-1, 120)), max_size=12),
    rate=st.floats(100, 100_000),
)
def test_admissions_shortcut_never_changes_a_decision(
    tokens: int, budget_s: float | None, queued: list[tuple[int, float | None]], rate: float
) -> None:
    """The O(R) shortcut (all work fits inside every deadline) only skips checks that could not refuse."""
    from reward_service.engine.admission import Queued, fair_share_refusal, refusal_reason

    admitted = [Queued(t, left) for t, left in queued]
    fast = refusal_reason(tokens, budget_s, admitted, rate)
    full = fair_share_refusal(tokens, budget_s, admitted, rate)
    assert fast == full


def test_small_batches_do_not_make_large_requests_look_too_slow_to_admit() -> None:
    from reward_service.engine.admission import Admission

    admission = Admission(min_rate_tokens=2048)
    # One-sample batches: 10 tokens in 50 ms looks like 200 tokens/s, mostly per-batch cost.
    for _ in range(20):
        admission.observe(tokens=10, seconds=0.05)
    assert admission.tokens_per_s is None
    assert admission.refusal(8_192, 55.0, []) is None  # 41 s at 200 tokens/s: would be refused
    admission.observe(tokens=8_192, seconds=1.0)
    assert admission.tokens_per_s == pytest.approx(8_192)
    assert "past its deadline" in (admission.refusal(8_192 * 100, 55.0, []) or "")


def test_a_request_that_cannot_finish_before_its_deadline_is_refused_at_once(slow_roberta: Path) -> None:
    app = create_app(service_settings(slow_roberta, retry_after_s=2, max_items_per_request=1024))
    with serving(app) as server:
        # One request first, so the engine has measured its rate (and this test the machine's).
        started = time.monotonic()
        warm = httpx.post(server.url + "/score", json={"texts": [LONG_TEXT] * 16}, timeout=120)
        assert warm.status_code == 200
        sixteen_s = time.monotonic() - started
        # 64 times that work, with a quarter of the time it needs: refused before any of it runs
        # (a 503 at once, not a 504 at the deadline). The budget is many times what tokenizing it takes.
        refused = httpx.post(
            server.url + "/score",
            json={"texts": [LONG_TEXT] * 1024},
            headers={"X-Reward-Timeout-Ms": str(int(16 * sixteen_s * 1000))},
            timeout=120,
        )
        assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
        assert "before its deadline" in refused.json()["detail"] and "scores" not in refused.json()
        metrics = httpx.get(server.url + "/metrics").text
        assert 'reward_requests_total{route="/score",scorer="roberta-hate",status="503"} 1.0' in metrics
        # The same work with time enough is admitted.
        fits = httpx.post(
            server.url + "/score",
            json={"texts": [LONG_TEXT] * 16},
            headers={"X-Reward-Timeout-Ms": "120000"},
            timeout=130,
        )
        assert fits.status_code == 200


def test_before_the_engine_has_answered_once_tokenizing_alone_is_the_rate_refusals_use(
    tiny_roberta: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = EngineGate(tmp_path / "gate").install(monkeypatch)
    # The front end's tokenizer measured 100 times slower than it is, so that the refusals below
    # need only budgets a loaded machine can read their bodies in (a 1 ms budget once was not).
    observe = MovingRate.observe
    monkeypatch.setattr(MovingRate, "observe", lambda rate, tokens, s: observe(rate, tokens, 100 * s))
    app = create_app(service_settings(tiny_roberta, retry_after_s=2, max_items_per_request=1024))
    with serving(app) as server, ThreadPoolExecutor(max_workers=1) as pool:
        gate.close()
        # Tokenized (the front end measures its tokenizer), then held in the engine: no answer yet,
        # so no engine rate, as when every request runs into its deadline.
        held = pool.submit(httpx.post, server.url + "/score", json={"texts": [LONG_TEXT] * 16}, timeout=60)
        gate.wait_held(1)
        refused = httpx.post(
            server.url + "/score",
            json={"texts": [LONG_TEXT] * 1024},
            headers={"X-Reward-Timeout-Ms": "300"},  # 50 ms after the margin
            timeout=60,
        )
        # A body small enough to be read first, with 100 ms left after the margin: refused by the
        # front end, before tokenizing, and counted with its items and why.
        small = httpx.post(
            server.url + "/score",
            json={"texts": [LONG_TEXT] * 80},
            headers={"X-Reward-Timeout-Ms": "350"},
            timeout=60,
        )
        metrics = httpx.get(server.url + "/metrics").text
        gate.open()
        assert held.result().status_code == 200
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert "before its deadline" in refused.json()["detail"]
    assert small.status_code == 503 and "before its deadline" in small.json()["detail"]
    rejected = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "reward_rejected_items"
        for sample in family.samples
        if sample.name == "reward_rejected_items_total"
    }
    # Once each (Prometheus refuses a repeated series); the body refused unread has no item count.
    assert metrics.count("# HELP reward_rejected_items_total") == 1
    assert rejected == {"deadline": 80.0, "queue_full": 0.0}


def _post_headers(port: int, length: int, timeout_ms: int) -> bytes:
    return (
        f"POST /score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nX-Reward-Timeout-Ms: {timeout_ms}\r\n\r\n"
    ).encode()


def test_a_large_request_that_cannot_finish_is_refused_from_its_headers_before_its_body_is_read(
    tiny_roberta: Path,
) -> None:
    app = create_app(service_settings(tiny_roberta, retry_after_s=2, max_items_per_request=1024))
    with serving(app) as server:
        port = int(server.url.rsplit(":", 1)[1])
        warm = httpx.post(server.url + "/score", json={"texts": [LONG_TEXT] * 64}, timeout=120)
        assert warm.status_code == 200  # the engine and the tokenizer have measured their rates
        # 20 MB announced with a 50 ms budget (300 ms less the margin): refused with only the
        # headers sent, where reading and decoding such a body alone would take longer.
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(_post_headers(port, 20_000_000, timeout_ms=300))
            refused = http.client.HTTPResponse(conn)
            refused.begin()
            detail = json.loads(refused.read())["detail"]
        assert refused.status == 503 and refused.getheader("retry-after") == "2"
        assert "before its deadline" in detail
        metrics = httpx.get(server.url + "/metrics").text
        assert 'reward_requests_total{route="/score",scorer="roberta-hate",status="503"} 1.0' in metrics
        # A large body with time enough is waited for, read and scored as usual.
        body = json.dumps({"texts": [LONG_TEXT] * 128}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
            conn.sendall(_post_headers(port, len(body), timeout_ms=60_000))
            conn.settimeout(0.5)
            with pytest.raises(TimeoutError):
                conn.recv(1)  # no answer before the body
            conn.settimeout(60)
            conn.sendall(body)
            scored = http.client.HTTPResponse(conn)
            scored.begin()
            assert scored.status == 200 and len(json.loads(scored.read())["scores"]) == 128
