"""One PPO step's reward wait on a GPU: a 0.5B-shaped policy generates, the service scores.

A Qwen2-0.5B-shaped causal LM (random weights, built locally: no hub download) generates
`--batch` responses of `--response-tokens` tokens on the GPU, as a PPO rollout does; the texts
(prompt + response) are then scored through `RewardClient` by the running service, whose engine
shares the GPU. Printed: the generation time and the reward wait (the client call), best of
`--repeats`, as one JSON line.

    python -m bench.gpu_reward_wait --url http://127.0.0.1:8000 --device cuda
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

from bench.stand_ins import build_classifier, natural_texts
from shared.client import RewardClient

# Qwen2-0.5B's shape; the vocabulary is the stand-in tokenizer's, so generated ids decode to text.
# "tiny" is for a rehearsal of bench/gpu_check.sh on a CPU, where the 0.5B shape takes minutes.
POLICY_SHAPES = {
    "qwen2-0.5b": {
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
    },
    "tiny": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 1024,
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--response-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--policy-shape", choices=sorted(POLICY_SHAPES), default="qwen2-0.5b")
    parser.add_argument("--stand-in", default="roberta-base", help="the stand-in whose tokenizer is used")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(build_classifier(args.stand_in))
    shape = POLICY_SHAPES[args.policy_shape]
    config = Qwen2Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **shape)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    policy = Qwen2ForCausalLM(config).to(args.device, dtype).eval()
    prompts = natural_texts(tokenizer, args.batch, low=48, high=80)
    tokenizer.padding_side = "left"
    encoded = tokenizer(prompts, return_tensors="pt", padding=True).to(args.device)

    generation_s, reward_s = [], []
    with RewardClient(args.url) as client:
        for _ in range(args.repeats):
            started = time.perf_counter()
            with torch.inference_mode():
                output = policy.generate(
                    **encoded,
                    max_new_tokens=args.response_tokens,
                    min_new_tokens=args.response_tokens,
                    do_sample=True,
                    pad_token_id=tokenizer.pad_token_id,
                )
            responses = tokenizer.batch_decode(
                output[:, encoded["input_ids"].shape[1] :], skip_special_tokens=True
            )
            generated = time.perf_counter()
            scores = client.score(queries=prompts, responses=responses).scores
            generation_s.append(generated - started)
            reward_s.append(time.perf_counter() - generated)
            assert len(scores) == args.batch
    print(
        json.dumps(
            {
                "policy": f"{args.policy_shape}-shaped",
                "batch": args.batch,
                "response_tokens": args.response_tokens,
                "generation_s": round(min(generation_s), 4),
                "reward_wait_s": round(min(reward_s), 4),
                "reward_share_of_step": round(min(reward_s) / (min(reward_s) + min(generation_s)), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
