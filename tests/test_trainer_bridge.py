"""The reward bridge: TRL's contract, and scores that reach TRL in order, on the right device."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

trl = pytest.importorskip("trl")

from trl.experimental import utils as trl_utils  # noqa: E402
from trl.experimental.ppo import ppo_trainer  # noqa: E402

from harness.live_server import LiveServer  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from shared.client import RewardClient  # noqa: E402
from trainer import reward_bridge  # noqa: E402
from trainer.reward_bridge import RemoteRewardModel  # noqa: E402


def test_trl_contract_is_the_one_the_bridge_relies_on() -> None:
    # If any of these fail after a TRL upgrade, read trainer/reward_bridge.py before changing the pin.
    assert trl.__version__ == reward_bridge.TRL_VERSION
    params = list(inspect.signature(trl_utils.get_reward).parameters)
    assert params == ["model", "query_responses", "pad_token_id", "context_length"]
    source = inspect.getsource(ppo_trainer.PPOTrainer)
    # Rewards come from the module-level get_reward, called on self.reward_model / reward_model,
    # and only the second element (one score per row) is used.
    assert (
        "_, score, _ = get_reward(\n                        reward_model, postprocessed_query_response"
        in source
    )
    assert "self.reward_model = prepare_deepspeed(self.reward_model, accelerator)" in source
    for name in reward_bridge.PATCHED_NAMES:
        assert hasattr(ppo_trainer, name), f"trl.experimental.ppo.ppo_trainer no longer has {name}"


@pytest.fixture(scope="module")
def policy_tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(build_tiny_policy(tmp_path_factory.mktemp("policy")))


def _rows(tokenizer, queries: list[str], responses: list[str]) -> tuple[torch.Tensor, int]:
    """Left-padded queries + right-padded responses, as TRL's rollout lays them out."""
    q = tokenizer(queries, padding=True, return_tensors="pt", padding_side="left")["input_ids"]
    r = tokenizer(responses, padding=True, return_tensors="pt", padding_side="right")["input_ids"]
    return torch.cat([q, r], dim=1), q.shape[1]


def test_split_and_decode_are_exact(policy_tokenizer) -> None:
    queries = ["Summarize the following conversation. Human: hi", "Short"]
    responses = ["I like you.", "Have a lovely day and thank you for your help."]
    rows, context = _rows(policy_tokenizer, queries, responses)
    model = RemoteRewardModel(client=None, tokenizer=policy_tokenizer)  # type: ignore[arg-type]
    assert model.decode_rows(rows, context) == (queries, responses)


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["own-pad", "pad-is-eos"])
def test_decode_drops_eos_and_padding_as_trl_rollouts_carry_them(policy_tokenizer, pad_is_eos: bool) -> None:
    """Rows as PPO's rollout makes them: left-padded query, then the generated response, its EOS, and
    padding after it (TRL fills past the stop token with pad, which is EOS for GPT-2 style models)."""
    tokenizer = policy_tokenizer
    eos = tokenizer.eos_token_id
    pad = eos if pad_is_eos else tokenizer.pad_token_id
    queries = ["Summarize the following conversation. Human: hi", "Short"]
    responses = ["I like you.", "Have a lovely day and thank you for your help."]
    encoded = [tokenizer(q)["input_ids"] for q in queries]
    context = max(map(len, encoded))
    query_part = [[pad] * (context - len(ids)) + ids for ids in encoded]
    generated = [tokenizer(r)["input_ids"] + [eos] for r in responses]
    width = max(map(len, generated)) + 3
    response_part = [ids + [pad] * (width - len(ids)) for ids in generated]
    rows = torch.tensor([q + r for q, r in zip(query_part, response_part, strict=True)])
    assert (rows == eos).sum() >= 2 and (rows == pad).any()
    if pad_is_eos:
        tokenizer = _with_pad(tokenizer, eos)
    model = RemoteRewardModel(client=None, tokenizer=tokenizer)  # type: ignore[arg-type]
    assert model.decode_rows(rows, context) == (queries, responses)


def _with_pad(tokenizer, pad_id: int):
    import copy

    clone = copy.deepcopy(tokenizer)
    clone.pad_token = clone.convert_ids_to_tokens(pad_id)
    return clone


def test_scores_reach_trl_in_order_on_the_rows_device(live_service: LiveServer, policy_tokenizer) -> None:
    reward_bridge.install()
    reward_bridge.install()  # idempotent: routing twice must not wrap twice
    queries = ["Human: tell me about music", "Human: hello", "Human: what is a garden?"]
    responses = ["You are stupid and worthless.", "Thank you for your help.", "I hate you."]
    rows, context = _rows(policy_tokenizer, queries, responses)
    with RewardClient(live_service.url) as client:
        model = RemoteRewardModel(client, policy_tokenizer, score_on="query_response")
        # Through the name TRL's PPO loop calls, as it calls it.
        logits, scores, lengths = ppo_trainer.get_reward(model, rows, policy_tokenizer.pad_token_id, context)
        expected = client.score(queries=queries, responses=responses).scores
        perm = [2, 0, 1]
        _, permuted, _ = ppo_trainer.get_reward(model, rows[perm], policy_tokenizer.pad_token_id, context)
    assert scores.device == rows.device and scores.dtype == torch.float32 and scores.shape == (3,)
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)
    assert permuted.tolist() == pytest.approx([expected[i] for i in perm], abs=1e-5)
    # The score sits at the last response token, as TRL's own get_reward places it.
    assert logits[torch.arange(3), lengths, 0].tolist() == pytest.approx(expected, abs=1e-5)
    assert model.stats.pop()["reward/calls"] == 2.0


def test_score_on_response_ignores_the_query(live_service: LiveServer, policy_tokenizer) -> None:
    reward_bridge.install()
    responses = ["You are stupid and worthless.", "I like you.", "Shut up, you idiot."]
    with RewardClient(live_service.url) as client:
        model = RemoteRewardModel(client, policy_tokenizer, score_on="response")
        a_rows, a_ctx = _rows(policy_tokenizer, ["Human: hi"] * 3, responses)
        b_rows, b_ctx = _rows(policy_tokenizer, ["I hate you. " * 5, "x", "Nobody wants you here"], responses)
        _, a, _ = ppo_trainer.get_reward(model, a_rows, policy_tokenizer.pad_token_id, a_ctx)
        _, b, _ = ppo_trainer.get_reward(model, b_rows, policy_tokenizer.pad_token_id, b_ctx)
        alone = client.score(texts=responses).scores
    assert a.tolist() == pytest.approx(b.tolist(), abs=1e-5)
    assert a.tolist() == pytest.approx(alone, abs=1e-5)
    assert len(set(round(s, 3) for s in alone)) > 1  # the scorer does tell these responses apart


def test_other_models_still_go_to_trl(tmp_path: Path, policy_tokenizer) -> None:
    from transformers import AutoModelForSequenceClassification

    reward_bridge.install()
    path = build_tiny_policy(tmp_path / "p")
    value_model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    rows, context = _rows(policy_tokenizer, ["Human: hi"], ["I like you."])
    pad = policy_tokenizer.pad_token_id
    routed = ppo_trainer.get_reward(value_model, rows, pad, context)
    original = trl_utils.get_reward(value_model, rows, pad, context)
    for got, want in zip(routed, original, strict=True):
        assert torch.equal(got, want)


def test_deepspeed_never_wraps_the_remote_module(policy_tokenizer) -> None:
    reward_bridge.install()
    model = RemoteRewardModel(client=None, tokenizer=policy_tokenizer)  # type: ignore[arg-type]
    # No accelerator is needed: the routed function returns before touching DeepSpeed.
    assert ppo_trainer.prepare_deepspeed(model, accelerator=None) is model
    assert list(model.parameters()) == []
