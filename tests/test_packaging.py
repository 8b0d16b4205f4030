"""What `pip install rlaif-reward` gives a user: the wheel's contents, console scripts that say which
extra to install instead of crashing, and the trainer configs by name."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from shared.extras import EXTRA_MODULES, missing_modules
from trainer.shipped_configs import CONFIG_DIR, resolve_config, shipped_configs
from trainer.usage import UsageError

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS = PYPROJECT["project"]["scripts"]
EXTRA_OF_SCRIPT = {"reward-service": "service", "rlaif-train": "train", "rlaif-eval": "train"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built from a copy of the checkout (tests, demo, bench and harness included, so that
    leaving them out is the build's doing)."""
    source = tmp_path_factory.mktemp("checkout") / "src"
    ignore = shutil.ignore_patterns(".git", ".venv", ".demo", "outputs", "build", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    # Without build isolation when this environment has setuptools (seconds, offline), else pip
    # fetches it as the image builds do.
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [built] = out.glob("*.whl")
    return zipfile.ZipFile(built)


def test_wheel_holds_the_three_import_packages_and_no_checkout_tree(wheel: zipfile.ZipFile) -> None:
    top_level = {
        name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")
    }
    assert top_level == {"reward_service", "shared", "trainer"}
    names = set(wheel.namelist())
    for module in (
        "reward_service/cli.py",
        "reward_service/engine/core.py",
        "shared/client.py",
        "trainer/cli.py",
    ):
        assert module in names, module


def test_wheel_ships_the_trainer_configs_but_not_the_demos(wheel: zipfile.ZipFile) -> None:
    configs = {name for name in wheel.namelist() if name.startswith("trainer/configs/")}
    assert configs == {
        "trainer/configs/qwen25_05b.yaml",
        "trainer/configs/llama31_8b_lora_reference.yaml",
        "trainer/configs/qwen25_05b_grpo.yaml",
        "trainer/configs/qwen25_05b_rloo.yaml",
        "trainer/configs/accelerate/ddp.yaml",
        "trainer/configs/accelerate/deepspeed_zero3.yaml",
    }


def test_wheel_console_scripts_are_the_checked_entry_points(wheel: zipfile.ZipFile) -> None:
    [entry_points] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    text = wheel.read(entry_points).decode()
    for script, target in SCRIPTS.items():
        assert f"{script} = {target}" in text
    assert set(SCRIPTS) == set(EXTRA_OF_SCRIPT)


# A client-only install, simulated: the blocked top-level modules cannot be found or imported.
BLOCKER = """
import sys
blocked = set(filter(None, sys.argv[1].split(",")))

class Blocker:
    def __init__(self, finder):
        self.finder = finder
    def __getattr__(self, name):  # find_distributions and the rest: the wrapped finder's
        return getattr(self.finder, name)
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            return None
        return self.finder.find_spec(name, path, target)

sys.meta_path[:] = [Blocker(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
module, _, function = sys.argv[2].partition(":")
sys.argv = sys.argv[2:]
getattr(__import__(module, fromlist=[function]), function)()
"""


def run_script(script: str, blocked: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(blocked), SCRIPTS[script], *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("script", sorted(EXTRA_OF_SCRIPT))
def test_scripts_without_their_extra_say_which_to_install(script: str) -> None:
    extra = EXTRA_OF_SCRIPT[script]
    # Everything but the client's dependencies missing, as after `pip install rlaif-reward`.
    every_extra_module = sorted({m for modules in EXTRA_MODULES.values() for m in modules})
    result = run_script(script, every_extra_module, "--help")
    assert result.returncode == 1
    assert f'pip install "rlaif-reward[{extra}]"' in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_one_missing_module_is_named() -> None:
    result = run_script("rlaif-train", ["peft"])
    assert result.returncode == 1
    assert "(missing: peft)" in result.stderr and "[train]" in result.stderr


def test_reward_service_script_runs_the_cli_when_the_extra_is_there() -> None:
    result = run_script("reward-service", [], "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: reward-service" in result.stdout


def test_extra_modules_cover_every_requirement_of_the_extra() -> None:
    modules_of = {}
    for module, distributions in importlib.metadata.packages_distributions().items():
        for distribution in distributions:
            modules_of.setdefault(canonical(distribution), set()).add(module)
    for extra, modules in EXTRA_MODULES.items():
        assert missing_modules(extra) == []  # this environment has every extra
        for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
            distribution = canonical(re.match(r"[A-Za-z0-9._-]+", requirement)[0])
            assert modules_of[distribution] & set(modules), (extra, requirement)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_configs_resolve_by_name_and_paths_stay_as_given() -> None:
    assert {"qwen25_05b", "llama31_8b_lora_reference"} <= set(shipped_configs())
    assert resolve_config("qwen25_05b") == str(CONFIG_DIR / "qwen25_05b.yaml")
    assert resolve_config("qwen25_05b.yaml") == str(CONFIG_DIR / "qwen25_05b.yaml")
    assert resolve_config("configs/qwen25_05b.yaml") == "configs/qwen25_05b.yaml"
    # A missing path or an unknown name is a usage error (exit 2) that says what exists.
    with pytest.raises(UsageError) as missing:
        resolve_config("./mine.yaml")
    assert missing.value.code == 2 and "./mine.yaml: no such file" in missing.value.message
    with pytest.raises(UsageError) as unknown:
        resolve_config("qwen25")
    assert unknown.value.code == 2 and "qwen25_05b" in unknown.value.message


def test_checkout_configs_folder_is_the_shipped_one() -> None:
    # docker-compose.yml, the Makefile's demo and the docs use configs/...; the wheel ships trainer/configs.
    assert (ROOT / "configs").resolve() == CONFIG_DIR
