"""`reward-service` flags: every setting is a flag, flags win over REWARD_* variables and those over
.env, `--help` and `--version` answer, and flag values reach every process the command starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from demo.run import ROOT, checkout_python_path, wait_ready
from harness.fake_bedrock import FakeBedrock
from harness.live_server import free_port
from reward_service.cli import main, parse_settings
from reward_service.settings import SETTINGS_ENV, ServiceSettings, settings_from_parent

INTERNAL = {"engine_addresses"}  # set by `reward-service --workers N` for its workers, not by people


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No REWARD_* variable or .env of the developer's; argparse's help is not wrapped."""
    for name in list(os.environ):
        if name.startswith("REWARD_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "300")


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


def test_help_lists_every_setting_with_its_variable_and_default(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REWARD_API_KEY", "s3cret-key")
    status, out, _ = run_main(["--help"], capsys)
    assert status == 0
    for name in ServiceSettings.model_fields.keys() - INTERNAL:
        assert f"--{name.replace('_', '-')}" in out
        assert f"REWARD_{name.upper()}" in out
    assert "--model str, --model-id str" in out.replace("--roberta-model str, ", "")
    assert "--json-logs" in out and "--version" in out
    assert "(default: 8000) [env: REWARD_PORT]" in out
    assert "(default: 16384) [env: REWARD_MAX_BATCH_TOKENS]" in out
    assert "--engine-addresses" not in out
    assert "s3cret-key" not in out  # a secret from the environment is never printed as a default


def test_version_is_the_installed_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_main(["--version"], capsys)
    assert status == 0 and out.strip() == f"reward-service {version('rlaif-reward')}"


def test_flags_win_over_variables_and_variables_over_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("REWARD_PORT=1111\nREWARD_DEVICE=cuda:3\nREWARD_DTYPE=bfloat16\n")
    monkeypatch.setenv("REWARD_PORT", "2222")
    monkeypatch.setenv("REWARD_DEVICE", "cuda:1")
    settings = parse_settings(["--port", "3333"])
    assert settings.port == 3333  # flag over variable
    assert settings.device == "cuda:1"  # variable over .env
    assert settings.dtype == "bfloat16"  # .env over default
    assert settings.workers == 1  # default


def test_flags_take_the_forms_other_servers_use() -> None:
    settings = parse_settings(
        [
            "--model",
            "/models/a",
            "--device",
            "cpu",
            "--scorers",
            "safety,roberta-hate,claude-bedrock",
            "--ensembles",
            "safety=roberta-hate:0.5,claude-bedrock:0.5",
            "--devices",
            "cuda:0,cuda:1",
            "--no-bedrock-use-tools",
            "--json-logs",
            "--workers",
            "3",
        ]
    )
    assert settings.roberta_model == "/models/a" and settings.device == "cpu"
    assert settings.scorers == ["safety", "roberta-hate", "claude-bedrock"]
    assert settings.ensembles == {"safety": {"roberta-hate": 0.5, "claude-bedrock": 0.5}}
    assert settings.devices == ["cuda:0", "cuda:1"] and settings.workers == 3
    assert settings.bedrock_use_tools is False and settings.log_format == "json"
    assert parse_settings(["--model-id", "/models/b"]).roberta_model == "/models/b"
    assert parse_settings(["--log-format", "json"]).log_format == "json"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--port", "0"], "port"),
        (["--dtype", "float8"], "float8"),
        (["--max-items-per-request", "10", "--queue-capacity", "5"], "REWARD_QUEUE_CAPACITY"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_a_bad_flag_exits_2_saying_what_is_wrong(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run_main(argv, capsys)
    assert status == 2 and message in err


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--log-level", "loud"], {}, "--log-level / REWARD_LOG_LEVEL: Input should be 'debug', 'info'"),
        ([], {"REWARD_LOG_LEVEL": "loud"}, "REWARD_LOG_LEVEL: Input should be 'debug'"),
        (["--scorers", "roberta-hate,foo"], {}, "unknown scorer(s) ['foo']; available: roberta-hate"),
        (
            [],
            {"REWARD_ENSEMBLES": "safety=roberta-hate:0.5,claude-bedrock:0.5"},
            "REWARD_ENSEMBLES 'safety' uses ['claude-bedrock'], which REWARD_SCORERS does not load",
        ),
        (
            [],
            {"REWARD_ENGINE_ADDRESSES": "not json"},
            'field "engine_addresses" from source "EnvSettingsSource"',
        ),
        ([], {"REWARD_PORT": "eighty"}, "--port / REWARD_PORT: Input should be a valid integer"),
    ],
)
def test_invalid_settings_exit_2_with_one_line_saying_why(
    argv: list[str],
    env: dict[str, str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # docs/reliability.md: "exits with status 2 and pydantic's reason", before anything starts.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, _, err = run_main(argv, capsys)
    assert status == 2 and message in err, err
    assert err.startswith("reward-service: invalid settings") and err.count("\n") == 1, err


def test_flag_values_reach_the_processes_the_command_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REWARD_BEDROCK_REGION", "eu-west-1")
    given = parse_settings(
        [
            "--model=/m",
            "--scorers=roberta-hate,claude-bedrock",
            "--devices=cuda:0,cuda:1",
            "--dtype=float16",
            "--api-key=k3y",
            "--max-wait-ms=2.5",
            "--openrlhf-strip-pattern=<pad>|</s>",
            "--bedrock-region=null",
            "--no-bedrock-use-tools",
            "--bedrock-offset=-1.5",
            "--ensembles=e=roberta-hate:0.25,claude-bedrock:0.75",
            "--json-logs",
        ]
    )
    assert given.bedrock_region is None  # "null" unsets it, even over the variable
    given = given.model_copy(update={"engine_addresses": {"roberta-hate": ["ipc:///tmp/e-0.sock"]}})
    monkeypatch.setenv(SETTINGS_ENV, given.serialize())
    # A variable set after the parent read its settings does not change what a worker gets.
    monkeypatch.setenv("REWARD_MAX_WAIT_MS", "99")
    # What a `--workers N` process reads: the same settings, the secret and engine sockets included.
    received = settings_from_parent()
    assert received == given
    assert received.api_key is not None and received.api_key.get_secret_value() == "k3y"


def test_a_worker_started_without_the_parents_settings_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SETTINGS_ENV, raising=False)
    with pytest.raises(RuntimeError, match=SETTINGS_ENV):
        settings_from_parent()


def test_workers_get_the_flags_and_every_process_logs_json_lines_with_request_ids(
    fake_bedrock: FakeBedrock, tmp_path: Path
) -> None:
    # The judge alone: no engine process to wait for, yet two uvicorn workers that import the app.
    port = free_port()
    command = [
        *(sys.executable, "-m", "reward_service", "--host", "127.0.0.1", "--port", str(port)),
        *("--workers", "2", "--scorers", "claude-bedrock", "--bedrock-endpoint-url", fake_bedrock.url),
        *("--max-items-per-request", "3", "--json-logs"),
    ]
    log = tmp_path / "service.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, process, timeout_s=120)
        for _ in range(6):  # whichever worker answers
            limits = httpx.get(url + "/scorers").json()["limits"]
            assert limits["max_items_per_request"] == 3
        too_many = httpx.post(url + "/score", json={"texts": ["a"] * 4})
        assert too_many.status_code == 413
        # /readyz answered for one worker; the other may still be starting its judge (a 503 with
        # Retry-After, which clients retry): wait for it as a client would.
        deadline = time.monotonic() + 60
        while True:
            scored = httpx.post(
                url + "/score", json={"texts": ["I like you."]}, headers={"X-Request-Id": "trace-42"}
            )
            if scored.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert scored.status_code == 200 and scored.headers["x-request-id"] == "trace-42"
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    assert all({"time", "level", "logger", "message", "pid"} <= set(line) for line in lines)
    started = {line["pid"] for line in lines if line["message"].startswith("Started server process")}
    assert len(started) == 2  # uvicorn's own lines, from each worker, in the same format
    # The loop above may have sent the id more than once (a 503 from a worker still starting on a
    # loaded machine, as CI saw): every line under it is the access line of one try, one the 200.
    tries = [line for line in lines if line.get("request_id") == "trace-42"]
    request_line = '"POST /score HTTP/1.1" '
    assert all(t["logger"] == "uvicorn.access" and request_line in t["message"] for t in tries), tries
    statuses = sorted(line["message"].split(request_line, 1)[1].split()[0] for line in tries)
    assert statuses == ["200"] + ["503"] * (len(tries) - 1), tries


def test_a_started_service_keeps_the_callers_python_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Packages installed with `pip --target` (the GPU machine's carried wheels) are found only
    # through PYTHONPATH: a child that got the checkout alone could not import them.
    (tmp_path / "carried_only_here.py").write_text("WHERE = 'carried'\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    probe = "import carried_only_here, demo.run; print(carried_only_here.WHERE)"
    child = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, "PYTHONPATH": checkout_python_path()},
        cwd=tmp_path.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "carried"
    assert checkout_python_path().split(os.pathsep)[0] == str(ROOT)
