"""Configuration errors are found before any model loads and reported as one line with exit code 2;
during training, only an unavailable service leads to "checkpoint + --resume"."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("trl")

from demo.hh_data import write_hh_jsonl  # noqa: E402
from harness.live_server import LiveServer, free_port, serving  # noqa: E402
from harness.service import service_settings  # noqa: E402
from harness.tiny_stand_ins import build_tiny_policy  # noqa: E402
from reward_service.app import create_app  # noqa: E402
from shared.client import RewardClient  # noqa: E402
from shared.errors import RewardRequestError, RewardServiceUnavailable  # noqa: E402
from trainer.cli import eval_main, train_main  # noqa: E402
from trainer.config import RLAIFArguments  # noqa: E402
from trainer.evaluate import scorer_has_labels  # noqa: E402
from trainer.preflight import PreflightError, check_reward_service  # noqa: E402
from trainer.train import _interrupted  # noqa: E402

# Never loaded: every case below must stop before the models are touched.
NO_MODEL = "/nonexistent/policy"


@pytest.fixture(scope="module")
def hh_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "hh.jsonl"
    write_hh_jsonl(path, n=20)
    return path


def train(url: str, data: Path, *extra: str) -> int:
    return train_main(
        ["--model_name_or_path", NO_MODEL, "--dataset_name", str(data), "--reward_url", url, *extra]
    )


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress bars of the dataset loader may come before
    assert "Traceback" not in err and last.startswith("error: ") and err.count("error: ") == 1, err
    return last


def test_a_missing_dataset_or_column_is_reported_before_models_load(
    live_service: LiveServer, hh_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(live_service.url, tmp_path / "missing.jsonl") == 2
    assert "--dataset_name: dataset file or directory not found" in one_line_error(capsys)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": "no chosen column here"}) + "\n")
    assert train(live_service.url, wrong) == 2
    assert "has no 'prompt' or 'chosen' column" in one_line_error(capsys)


UNREACHABLE = "http://127.0.0.1:9"  # never asked: the dataset is checked before the service


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("", [], "is empty: no rows"),
        ("[]", [], "has no rows"),
        (json.dumps({"chosen": "short"}) + "\n", [], "no dialogue of the 1 rows has 100 < length"),
        ("\n".join(json.dumps({"prompt": p}) for p in ("Hi there", "  ", "Hello")), [], "prompt 1 is empty"),
        (json.dumps({"prompt": "only one"}) + "\n", [], "only 1 usable prompt(s)"),
    ],
    ids=["empty-file", "empty-list", "filter-keeps-nothing", "empty-prompt", "one-prompt"],
)
def test_an_unusable_dataset_is_one_line_before_models_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, extra: list[str], message: str
) -> None:
    data = tmp_path / ("data.json" if content == "[]" else "data.jsonl")
    data.write_text(content)
    assert train(UNREACHABLE, data, *extra) == 2
    assert message in one_line_error(capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--algorithm", "dpo"], "choose one of ppo, grpo, rloo"),
        # A typo, also one that is a prefix of a real flag (argparse would take it as --learning_rate).
        (["--learning_rat", "1e-5"], "not used by the HfArgumentParser: ['--learning_rat'"),
        (
            ["--algorithm", "grpo", "--kl_coef", "0.1"],
            "(this run: grpo); see rlaif-train --algorithm grpo --help",
        ),
        (["--config", "no-such-config"], "no shipped config of that name"),
        (["--config", "configs/no-such.yaml"], "configs/no-such.yaml: no such file"),
        (["--score_on", "foo"], "invalid choice: 'foo'"),
        (["--learning_rate", "abc"], "invalid float value: 'abc'"),
    ],
    ids=[
        "unknown-algorithm",
        "typo",
        "other-algorithm",
        "unknown-config",
        "missing-config-file",
        "bad-choice",
        "bad-number",
    ],
)
def test_every_usage_error_is_one_line_and_exit_2(
    hh_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert train(UNREACHABLE, hh_file, *argv) == 2
    assert message in one_line_error(capsys)


def test_a_token_length_filter_that_keeps_no_prompt_is_one_line_and_exit_2(
    live_service: LiveServer, hh_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The last dataset check needs the tokenizer: it runs once that is loaded, still before the
    models, and words its error like the others."""
    policy = build_tiny_policy(tmp_path / "policy")
    argv = ["--model_name_or_path", str(policy), "--dataset_name", str(hh_file)]
    argv += [
        "--reward_url",
        live_service.url,
        "--output_dir",
        str(tmp_path / "run"),
        "--max_prompt_tokens",
        "1",
    ]
    assert train_main(argv) == 2
    assert "every prompt is longer than max_prompt_tokens=1" in one_line_error(capsys)


def test_grpo_help_recommends_only_flags_grpo_takes() -> None:
    from trainer.config import parser

    grpo = parser("grpo").format_usage()
    assert "--beta" in grpo and "--num_generations" in grpo and "--kl_coef" not in grpo
    assert "--kl_coef" in parser("ppo").format_usage()


def test_model_paths_are_checked_from_their_config_before_loading(
    live_service: LiveServer,
    tiny_roberta: Path,
    hh_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import T5Config

    def policy(path: str) -> int:
        return train_main(
            ["--model_name_or_path", path, "--dataset_name", str(hh_file), "--reward_url", live_service.url]
        )

    assert policy(str(tmp_path / "nowhere")) == 2
    assert "no such directory" in one_line_error(capsys)
    (tmp_path / "not-a-model").mkdir()
    assert policy(str(tmp_path / "not-a-model")) == 2
    assert "not a model folder (no config.json)" in one_line_error(capsys)
    T5Config(d_model=8, num_layers=1, num_heads=1, d_ff=8, vocab_size=10).save_pretrained(tmp_path / "t5")
    assert policy(str(tmp_path / "t5")) == 2
    assert "sequence-to-sequence (encoder-decoder) model (t5) is not supported" in one_line_error(capsys)
    # The reward model's folder passed as the policy: RoBERTa has a causal-LM class, but this folder's
    # head is a 2-label classifier.
    assert policy(str(tiny_roberta)) == 2
    assert "a sequence classifier (RobertaForSequenceClassification, 2 labels), not a causal LM" in (
        one_line_error(capsys)
    )
    # A hub id that is not cached, with downloads forbidden.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert policy("someone/not-cached-model") == 2
    assert "not in the local Hugging Face cache, and HF_HUB_OFFLINE=1" in one_line_error(capsys)


def test_an_output_dir_that_cannot_be_written_is_found_before_loading(
    live_service: LiveServer, hh_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert train(live_service.url, hh_file, "--output_dir", str(blocker / "run")) == 2
    assert "--output_dir" in (err := one_line_error(capsys)) and "not writable" in err


@pytest.mark.parametrize(
    ("url_of", "message"),
    [
        (lambda url: url.removeprefix("http://"), "must start with http://"),
        (lambda url: url + "/score", "base URL (e.g. http://host:8000), without a path"),
        (lambda url: f"http://127.0.0.1:{free_port()}", "not reachable"),
    ],
    ids=["no-scheme", "path-score", "unreachable"],
)
def test_a_wrong_reward_url_is_one_line_with_what_to_fix(
    live_service: LiveServer, hh_file: Path, capsys: pytest.CaptureFixture[str], url_of, message: str
) -> None:
    assert train(url_of(live_service.url), hh_file) == 2
    assert message in one_line_error(capsys)


def test_an_unknown_scorer_is_named_with_the_ones_served(
    live_service: LiveServer, hh_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train(live_service.url, hh_file, "--reward_scorer", "no-such") == 2
    assert "--reward_scorer 'no-such': " in (err := one_line_error(capsys)) and "roberta-hate" in err
    assert train(live_service.url, hh_file, "--eval_scorer", "other") == 2
    assert "--eval_scorer 'other'" in one_line_error(capsys)


def test_several_training_scorers_are_each_checked_against_those_served(tiny_roberta: Path) -> None:
    """`--reward_scorer a,b` (GRPO/RLOO with one reward function per scorer) names two scorers, not
    one called 'a,b'; each must be served and ready."""
    settings = service_settings(tiny_roberta, ensembles="half=roberta-hate:0.5")
    with serving(create_app(settings)) as server:
        served = RLAIFArguments(dataset_name="x", reward_url=server.url, reward_scorer="roberta-hate, half")
        check_reward_service(served)  # no error
        missing = RLAIFArguments(dataset_name="x", reward_url=server.url, reward_scorer="roberta-hate,nope")
        with pytest.raises(PreflightError, match="--reward_scorer 'nope': .* serves roberta-hate, half"):
            check_reward_service(missing)
        # The evaluation asks for labels (the hate share) only of a scorer that has them: an
        # ensemble gives one number and refuses return_labels.
        with RewardClient(server.url) as client:
            assert scorer_has_labels(client, None) and scorer_has_labels(client, "roberta-hate")
            assert not scorer_has_labels(client, "half")


def test_a_wrong_or_missing_key_is_reported_and_show_traceback_raises(
    tiny_roberta: Path, hh_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("REWARD_API_KEY", raising=False)
    with serving(create_app(service_settings(tiny_roberta, api_key="right"))) as server:
        assert train(server.url, hh_file) == 2
        assert "refused the API key (401)" in one_line_error(capsys)
        assert train(server.url, hh_file, "--reward_api_key", "wrong") == 2
        assert "REWARD_API_KEY" in one_line_error(capsys)
        with pytest.raises(PreflightError, match="refused the API key"):
            train(server.url, hh_file, "--show_traceback", "true")


def test_rlaif_eval_on_a_folder_without_a_trained_model_says_so(
    live_service: LiveServer, hh_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--model_name_or_path",
        NO_MODEL,
        "--dataset_name",
        str(hh_file),
        "--reward_url",
        live_service.url,
    ]
    assert eval_main([*argv, "--output_dir", str(tmp_path / "empty")]) == 2
    assert "no trained model in" in one_line_error(capsys)
    # A trained model, but its report could not be written where asked: said before anything loads.
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "config.json").write_text("{}")
    (tmp_path / "a-file").write_text("")
    blocked = ["--eval_model", str(tmp_path / "tuned"), "--output_dir", str(tmp_path / "a-file" / "report")]
    assert eval_main([*argv, *blocked]) == 2
    assert "--output_dir" in (line := one_line_error(capsys)) and "not writable" in line


@dataclass
class _State:
    global_step: int
    log_history: list = field(default_factory=list)


@dataclass
class _Args:
    output_dir: str
    should_save: bool = True  # the main process


class _StubTrainer:
    """What `_interrupted` reads of a PPO trainer."""

    def __init__(self, step: int, output_dir: Path) -> None:
        self.state = _State(step)
        self.args = _Args(str(output_dir))
        self.saved: list[Path] = []

    def save_checkpoint_now(self) -> Path:
        path = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        self.saved.append(path)
        return path


def test_only_an_unavailable_service_is_resumable_and_nothing_is_claimed_before_a_step(
    tmp_path: Path,
) -> None:
    unavailable = RewardServiceUnavailable("reward service did not answer", 8, "ConnectError")
    refused = RewardRequestError(401, "missing or wrong API key", "http://h:8000")

    trainer = _StubTrainer(3, tmp_path)
    stopped = _interrupted(trainer, unavailable)  # type: ignore[arg-type]
    assert trainer.saved and stopped.checkpoint == trainer.saved[0]
    assert "start the service and rerun with --resume" in str(stopped)

    trainer = _StubTrainer(3, tmp_path)
    stopped = _interrupted(trainer, refused)  # type: ignore[arg-type]
    assert "refused" in str(stopped) and "401" in str(stopped) and "fix the setting" in str(stopped)
    assert "start the service" not in str(stopped)

    for error in (unavailable, refused):
        trainer = _StubTrainer(0, tmp_path)
        stopped = _interrupted(trainer, error)  # type: ignore[arg-type]
        assert not trainer.saved and stopped.checkpoint is None
        assert "nothing to resume" in str(stopped) and "rerun with --resume" not in str(stopped)


def test_a_classifier_with_several_labels_is_refused_as_the_critic(tiny_roberta: Path) -> None:
    from trainer.model_check import ModelPathError, check_model_path

    with pytest.raises(ModelPathError, match="with 2 labels .*PPO's critic has one output"):
        check_model_path("--value_model_path", str(tiny_roberta), role="value")
