"""GRPO/RLOO on a random-init tiny policy: what is scored in training and in evaluation.

    python bench/group_learning_probe.py ROOT grpo --num_generations 8 --learning_rate 1e-3 \
        --max_steps 30 --score_on response [--disable_dropout true --scale_rewards batch ...]

Builds (once, under ROOT) the tiny RoBERTa and a tiny GPT-2 (random weights unless PRETRAIN=N),
serves the RoBERTa on a loopback port and runs `rlaif-train` with the given flags. Every call of
the GRPO/RLOO reward function is logged to ROOT/scored_train_<algorithm>.jsonl (prompts,
completions, completion ids, scores) and every evaluation call to ROOT/scored_eval_<algorithm>.jsonl,
so the texts can be compared and the rewards scored again (docs/trainer.md, issue 23 item 7).
The logging wraps the library functions in this process only.
"""

import json
import os
import sys
import time
from pathlib import Path

import shared.client as sc
import shared.reward_function as rf
from demo.hh_data import write_hh_jsonl
from demo.tiny_models import build_tiny_roberta_classifier
from demo.tiny_policy import build_tiny_policy
from harness.live_server import serving
from reward_service.app import create_app
from reward_service.settings import ServiceSettings
from trainer.cli import train_main

root = Path(sys.argv[1])
root.mkdir(parents=True, exist_ok=True)
algorithm = sys.argv[2]
extra = sys.argv[3:]
roberta = root / "roberta"
if not (roberta / "config.json").exists():
    build_tiny_roberta_classifier(roberta, train_steps=150)
policy = root / "policy"
if not (policy / "config.json").exists():
    build_tiny_policy(
        policy, seed=int(os.environ.get("POLICY_SEED", 0)), pretrain_steps=int(os.environ.get("PRETRAIN", 0))
    )
data = write_hh_jsonl(root / "hh.jsonl", n=200)

train_log = open(root / f"scored_train_{algorithm}.jsonl", "w")
eval_log = open(root / f"scored_eval_{algorithm}.jsonl", "w")
orig_async = rf.RemoteReward.score_async


async def logged_async(self, prompts, completions, **kw):
    scores = await orig_async(self, prompts, completions, **kw)
    train_log.write(
        json.dumps(
            {
                "prompts": [rf.as_text(p) for p in prompts],
                "completions": [rf.as_text(c) for c in completions],
                "scores": scores,
                "ids": [list(map(int, c)) for c in kw.get("completion_ids") or []],
            }
        )
        + "\n"
    )
    train_log.flush()
    return scores


rf.RemoteReward.score_async = logged_async
orig_score = sc.RewardClient.score


def logged_score(self, **kw):
    out = orig_score(self, **kw)
    eval_log.write(
        json.dumps(
            {
                "queries": kw["queries"],
                "responses": kw["responses"],
                "score_on": kw.get("score_on"),
                "scores": out.scores,
            }
        )
        + "\n"
    )
    eval_log.flush()
    return out


sc.RewardClient.score = logged_score

settings = ServiceSettings(
    _env_file=None,
    roberta_model=str(roberta),
    device="cpu",
    max_items_per_request=64,
    max_text_chars=5000,
    queue_capacity=4096,
)
with serving(create_app(settings)) as server:
    out = root / f"out_{algorithm}_{int(time.time())}"
    args = [
        "--algorithm",
        algorithm,
        "--model_name_or_path",
        str(policy),
        "--dataset_name",
        str(data),
        "--output_dir",
        str(out),
        "--reward_url",
        server.url,
        "--eval_samples",
        "32",
        "--per_device_train_batch_size",
        "16",
        "--max_completion_length",
        "16",
        "--temperature",
        "1.0",
        "--logging_steps",
        "1",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        "--bf16",
        "false",
        "--seed",
        "0",
    ] + extra
    t = time.time()
    code = train_main(args)
    print("exit", code, "time", time.time() - t)
    rep = json.loads((out / "report.json").read_text())
    log = [e for e in json.loads((out / "train_log.json").read_text()) if "reward/mean" in e]
    r = [e["reward/mean"] for e in log]
    print(
        "RESULT",
        algorithm,
        extra,
        "heldout",
        round(rep["before"]["mean"], 3),
        "->",
        round(rep["after"]["mean"], 3),
        "train first5",
        round(sum(r[:5]) / 5, 3),
        "last5",
        round(sum(r[-5:]) / 5, 3),
        "resp",
        rep["responses"],
    )
    print("entropy", [round(e.get("entropy", 0), 2) for e in log][::5])
