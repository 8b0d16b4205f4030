"""A front-end process serves without PyTorch or transformers: the engine sends it the model's
labels, window and tokenizer (`ModelCard`), so each `--workers` process is a few seconds and
about 200 MB lighter than one that loads them itself (docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.reference_scoring import DirectScorer

ROOT = Path(__file__).resolve().parent.parent

# Serves the app in this interpreter (the engine in its own process), scores one text, then says
# which heavy modules this process imported.
FRONT_END = """
import json, sys
import httpx
from harness.live_server import serving
from harness.service import service_settings
from reward_service.app import create_app

with serving(create_app(service_settings(sys.argv[1])), timeout_s=120) as server:
    scored = httpx.post(server.url + "/score", json={"texts": [sys.argv[2]]}, timeout=30).json()
    scorer = httpx.get(server.url + "/scorers", timeout=30).json()["scorers"][0]
print(json.dumps({
    "score": scored["scores"][0],
    "labels": scorer["labels"],
    "max_tokens": scorer["max_tokens"],
    "imported": sorted(name for name in ("torch", "transformers") if name in sys.modules),
}))
"""


def test_a_front_end_scores_without_importing_torch_or_transformers(tiny_roberta: Path) -> None:
    text = "Thank you for your help, friend."
    done = subprocess.run(
        [sys.executable, "-c", FRONT_END, str(tiny_roberta), text],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["imported"] == []
    assert found["labels"] == ["nothate", "hate"]
    assert found["max_tokens"] == 512  # roberta's 514 positions less the two the padding offset takes
    assert found["score"] == pytest.approx(DirectScorer(tiny_roberta).nothate_logit(text), abs=1e-4)
