"""The shipped configs parse with the real argument classes and hold the settings they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

pytest.importorskip("trl")

from trainer import config as trainer_config  # noqa: E402
from trainer.config import parse_args  # noqa: E402
from trainer.usage import UsageError  # noqa: E402

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
CPU = ["--use_cpu", "true"]


def test_reference_config_has_the_article_settings() -> None:
    script, ppo, model = parse_args(["--config", str(CONFIGS / "llama31_8b_lora_reference.yaml"), *CPU])
    assert model.model_name_or_path == "meta-llama/Llama-3.1-8B-Instruct" and model.use_peft
    assert ppo.learning_rate == pytest.approx(1.41e-5)
    assert ppo.per_device_train_batch_size * ppo.gradient_accumulation_steps == 16  # batch 16
    assert 16 // ppo.num_mini_batches == 4  # mini-batch 4
    assert ppo.num_ppo_epochs == 1
    assert script.dataset_name == "Anthropic/hh-rlhf" and script.score_on == "query_response"


@pytest.mark.parametrize("name", ["qwen25_05b.yaml", "demo.yaml"])
def test_other_configs_parse_and_flags_override_them(name: str) -> None:
    script, ppo, model = parse_args(["--config", str(CONFIGS / name), *CPU, "--eval_samples", "7"])
    assert model.model_name_or_path and script.eval_samples == 7
    assert ppo.num_sample_generations == 0  # evaluation is ours, not TRL's sampled tables


@pytest.mark.parametrize("name", ["ddp.yaml", "deepspeed_zero3.yaml"])
def test_accelerate_configs(name: str) -> None:
    config = yaml.safe_load((CONFIGS / "accelerate" / name).read_text())
    assert config["distributed_type"] in {"MULTI_GPU", "DEEPSPEED"}
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] == 3


@pytest.mark.parametrize("name", ["qwen25_05b.yaml", "llama31_8b_lora_reference.yaml", "demo.yaml"])
def test_precision_is_bf16_only_where_the_gpu_supports_it_and_a_flag_wins(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = ["--config", str(CONFIGS / name)]
    # On a CPU machine the shipped configs parse without a precision flag (TRL's default bf16 refused).
    assert parse_args(config)[1].bf16 is False
    assert parse_args([*config, "--bf16", "true", "--use_cpu", "true"])[1].bf16 is True
    if name != "demo.yaml":  # the demo is a CPU run and says so
        # As on a bf16 GPU; the parent's checks (which would find no GPU here) are skipped.
        monkeypatch.setattr(trainer_config, "bf16_supported", lambda: True)
        monkeypatch.setattr(trainer_config.PPOConfig, "__post_init__", lambda self: None)
        assert parse_args(config)[1].bf16 is True
        assert parse_args([*config, "--bf16", "false"])[1].bf16 is False


def test_a_shipped_config_is_found_by_name_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # as an installed user: no configs/ folder here
    _, _, model = parse_args(["--config", "qwen25_05b", *CPU])
    assert model.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    _, _, model = parse_args(["--config", str(CONFIGS / "qwen25_05b.yaml"), *CPU])  # a path as given
    assert model.model_name_or_path == "Qwen/Qwen2.5-0.5B-Instruct"
    with pytest.raises(SystemExit, match="llama31_8b_lora_reference"):
        parse_args(["--config", "qwen25", *CPU])


def test_help_starts_with_a_usage_that_names_the_flags_that_matter() -> None:
    text = trainer_config.parser().format_help()
    usage = text[: text.index("options:")]
    assert usage.splitlines()[0].startswith("usage: ") and "--config configs/qwen25_05b.yaml" in usage
    for flag in ("--model_name_or_path", "--dataset_name", "--reward_url", "--reward_scorer", "--resume"):
        assert flag in usage, flag
    # Flags TRL adds that this trainer ignores are not advertised (but still parse).
    for flag in trainer_config.UNUSED_FLAGS:
        assert flag not in text, flag
    assert parse_args(["--model_name_or_path", "m", "--dataset_test_split", "x"])[0].dataset_test_split == "x"


@pytest.mark.parametrize(("name", "algorithm"), [("qwen25_05b_grpo", "grpo"), ("qwen25_05b_rloo", "rloo")])
def test_group_configs_pick_their_trainer_and_take_its_flags(name: str, algorithm: str) -> None:
    from trl import GRPOConfig, RLOOConfig

    script, config, _ = parse_args(["--config", name, *CPU, "--num_generations", "8"])
    assert script.algorithm == algorithm
    assert isinstance(config, {"grpo": GRPOConfig, "rloo": RLOOConfig}[algorithm])
    assert config.num_generations == 8 and config.bf16 is False and config.beta > 0
    # Flags of another algorithm are refused, not silently ignored, and the message says whose they are;
    # a typo is answered with the flag it is closest to.
    with pytest.raises(SystemExit, match="--kl_coef is a flag of --algorithm ppo, not of " + algorithm):
        parse_args(["--config", name, *CPU, "--kl_coef", "0.1"])
    with pytest.raises(SystemExit, match=r"Did you mean --learning_rate\?"):
        parse_args(["--config", name, *CPU, "--learning_rat", "0.1"])
    # PPO's critic flag is this trainer's own: refused with the reason and not in this --help.
    with pytest.raises(SystemExit, match="only PPO trains a value model"):
        parse_args(["--config", name, *CPU, "--value_model_path", "critic"])
    assert "--value_model_path" not in trainer_config.parser(algorithm).format_help()
    assert "--value_model_path" in trainer_config.parser("ppo").format_help()
    # --algorithm on the command line wins over the file, whose GRPO/RLOO keys PPO then refuses.
    with pytest.raises(SystemExit, match="this run: ppo"):
        parse_args(["--config", name, *CPU, "--algorithm", "ppo"])


def test_several_scorers_need_matching_weights_and_a_group_algorithm() -> None:
    base = ["--model_name_or_path", "m", *CPU, "--reward_scorer", "roberta-hate,claude-bedrock"]
    with pytest.raises(SystemExit, match="PPO takes one scorer"):
        parse_args(base)
    with pytest.raises(SystemExit, match="1 weight"):
        parse_args([*base, "--algorithm", "grpo", "--reward_weights", "1.0"])
    script, config, _ = parse_args([*base, "--algorithm", "rloo", "--reward_weights", "1.0", "0.5"])
    assert script.reward_scorers() == ["roberta-hate", "claude-bedrock"]
    assert config.reward_weights == [1.0, 0.5]
    # The evaluation scores with the first of them (one scorer, not "roberta-hate,claude-bedrock").
    assert script.evaluation_scorer() == "roberta-hate"
    with pytest.raises(SystemExit, match="a scorer name is empty"):
        parse_args(["--model_name_or_path", "m", *CPU, "--algorithm", "grpo", "--reward_scorer", "a,"])
    with pytest.raises(SystemExit, match="choose one of ppo, grpo, rloo"):
        parse_args(["--model_name_or_path", "m", "--algorithm", "dpo"])


def test_demo_help_answers_without_building_or_starting_anything(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from demo import run

    def never(*args: object) -> None:
        raise AssertionError("--help built the stand-ins")

    monkeypatch.setattr(run, "build_stand_ins", never)
    assert run.main(["--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m demo.run")


def test_a_config_that_is_not_valid_yaml_is_a_usage_error_naming_the_place(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_name_or_path: policy\nlearning_rate: [1\n")
    where = r"--config .*broken\.yaml: not valid YAML at line \d+, column \d+"
    for argv in (["--config", str(broken)], ["--algorithm", "grpo", "--config", str(broken)]):
        with pytest.raises(UsageError, match=where):
            parse_args(argv)


def test_reward_url_defaults_to_the_environments_and_a_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["--model_name_or_path", "m", "--dataset_name", "d"]
    monkeypatch.setenv("REWARD_URL", "http://rm:9000")
    assert parse_args(base)[0].reward_url == "http://rm:9000"
    assert parse_args([*base, "--reward_url", "http://other:1"])[0].reward_url == "http://other:1"
    monkeypatch.delenv("REWARD_URL")
    assert parse_args(base)[0].reward_url == "http://127.0.0.1:8000"
