"""Each install README gives, alone in a fresh venv: `pip install .`, `.[service]`, `.[train]`.

CI's own environment installs `.[all]` into one venv, where one extra's packages hide another's
missing dependency (TRL's GRPO module imports `requests`, which neither TRL nor `train` declared).
Here every extra gets a venv of its own, built the way README and the Makefile build it (torch's
CPU build first, then the project, not editable), and then every console script runs and every
module of the packages that extra serves is imported, so a dependency that is imported but not
declared fails CI.

Run with `make install-test` (a few minutes: two torch installs).
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_CPU = os.environ.get("TORCH_CPU", "torch==2.13.0")

# extra -> (needs torch, packages whose every module must import, scripts that must answer --help)
INSTALLS: dict[str, tuple[bool, tuple[str, ...], tuple[tuple[str, ...], ...]]] = {
    "": (False, ("shared",), ()),
    "service": (
        True,
        ("shared", "reward_service"),
        (("reward-service", "--help"), ("reward-service", "--version")),
    ),
    "train": (
        True,
        ("shared", "trainer"),
        (
            ("rlaif-train", "--help"),
            ("rlaif-train", "--algorithm", "grpo", "--help"),
            ("rlaif-train", "--algorithm", "rloo", "--help"),
            ("rlaif-eval", "--help"),
        ),
    ),
}

IMPORT_EVERY_MODULE = """
import importlib, pkgutil, sys
failed = []
for top in sys.argv[1:]:
    package = importlib.import_module(top)
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.endswith(".__main__"):  # runs the program: its imports are the cli's
            continue
        try:
            importlib.import_module(info.name)
        except Exception as error:
            failed.append(f"{info.name}: {type(error).__name__}: {error}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def run(argv: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module", params=list(INSTALLS), ids=lambda extra: extra or "client")
def installed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    extra = request.param
    needs_torch = INSTALLS[extra][0]
    home = tmp_path_factory.mktemp(f"venv-{extra or 'client'}")
    venv.EnvBuilder(with_pip=True).create(home)
    python = home / "bin" / "python"
    if needs_torch:
        done = run([str(python), "-m", "pip", "install", "-q", TORCH_CPU], cwd=home)
        assert done.returncode == 0, done.stderr[-3000:]
    target = f"{ROOT}[{extra}]" if extra else str(ROOT)
    done = run([str(python), "-m", "pip", "install", "-q", target], cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return extra, home


def test_every_module_of_the_installed_packages_imports(installed: tuple[str, Path]) -> None:
    extra, home = installed
    packages = INSTALLS[extra][1]
    # Outside the checkout, so that the installed packages are imported, not the source tree.
    done = run([str(home / "bin" / "python"), "-c", IMPORT_EVERY_MODULE, *packages], cwd=home)
    assert done.returncode == 0, f"[{extra}] modules that do not import:\n{done.stdout}{done.stderr[-2000:]}"


def test_console_scripts_answer(installed: tuple[str, Path]) -> None:
    extra, home = installed
    for argv in INSTALLS[extra][2]:
        done = run([str(home / "bin" / argv[0]), *argv[1:]], cwd=home, timeout=300)
        assert done.returncode == 0, f"{' '.join(argv)} exited {done.returncode}:\n{done.stderr[-3000:]}"
        assert done.stdout.strip(), f"{' '.join(argv)} printed nothing"


def test_scripts_of_a_missing_extra_name_the_extra_to_install(installed: tuple[str, Path]) -> None:
    extra, home = installed
    bin_dir = home / "bin"
    # The scripts, and the `python -m` forms README gives beside them.
    absent = [
        ([str(bin_dir / "reward-service")], "service"),
        ([str(bin_dir / "python"), "-m", "reward_service"], "service"),
        ([str(bin_dir / "rlaif-train")], "train"),
        ([str(bin_dir / "rlaif-eval")], "train"),
        ([str(bin_dir / "python"), "-m", "trainer"], "train"),
    ]
    for command, needed in absent:
        if needed == extra:
            continue
        done = run([*command, "--help"], cwd=home, timeout=300)
        shown = " ".join(command[-3:])
        assert done.returncode == 1, f"{shown} without [{needed}]: exit {done.returncode}\n{done.stderr}"
        assert f'pip install "rlaif-reward[{needed}]"' in done.stderr, done.stderr


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
