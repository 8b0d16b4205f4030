"""`python -m demo.run` (`make demo`): the whole pipeline offline, on CPU, in a few minutes.

Builds the stand-ins under `.demo/` (a tiny RoBERTa hate classifier with the real label layout, a
tiny GPT-2 policy, an hh-rlhf-shaped JSONL file), starts the reward service as a subprocess on a
free loopback port, waits for /readyz, runs a short PPO training through it with
`configs/demo.yaml`, prints the before/after report, and stops the service. Extra arguments are
passed to the trainer (`python -m demo.run --total_episodes 320`).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_stand_ins(demo_dir: Path) -> dict[str, Path]:
    """Build (once) the classifier, the policy and the data file."""
    from demo.hh_data import write_hh_jsonl
    from demo.tiny_models import build_tiny_roberta_classifier
    from demo.tiny_policy import build_tiny_policy

    paths = {
        "classifier": demo_dir / "classifier",
        "policy": demo_dir / "policy",
        "data": demo_dir / "hh.jsonl",
    }
    if not (paths["classifier"] / "config.json").exists():
        print("building the tiny RoBERTa classifier ...", flush=True)
        build_tiny_roberta_classifier(paths["classifier"], train_steps=150)
    if not (paths["policy"] / "config.json").exists():
        print("building the tiny policy ...", flush=True)
        build_tiny_policy(paths["policy"], pretrain_steps=120)
    if not paths["data"].exists():
        write_hh_jsonl(paths["data"], n=200)
    return paths


def checkout_python_path() -> str:
    """PYTHONPATH for a child process: this checkout first, then the caller's own PYTHONPATH.

    The caller's entries are kept: packages installed with `pip --target` (as on the GPU machine,
    bench/gpu_check.sh) are found only through them.
    """
    return os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)


def start_service(
    classifier: Path, port: int, log_path: Path, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`python -m reward_service` on a loopback port, serving `classifier` on the CPU."""
    env = {
        **os.environ,
        "PYTHONPATH": checkout_python_path(),
        "REWARD_ROBERTA_MODEL": str(classifier),
        "REWARD_DEVICE": "cpu",
        "REWARD_LOG_LEVEL": "warning",
        **(extra_env or {}),
    }
    log = log_path.open("wb")
    command = [sys.executable, "-m", "reward_service", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the reward service exited with code {process.returncode}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"the reward service at {url} was not ready after {timeout_s:.0f}s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def running_service(
    classifier: Path, log_path: Path, extra_env: dict[str, str] | None = None, timeout_s: float = 120.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The service on a free loopback port, once ready: its URL and process. Stopped on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_service(classifier, port, log_path, extra_env)
    try:
        wait_ready(url, process, timeout_s)
        yield url, process
    finally:
        stop(process)


HELP = """usage: python -m demo.run [trainer flags]

The whole pipeline offline on CPU: builds tiny stand-in models and data under .demo/ (once), starts
the reward service on a free loopback port, trains PPO with configs/demo.yaml through it, prints the
before/after report and stops the service. Trainer flags are appended after the demo's own and win
(e.g. --total_episodes 320); `rlaif-train --help` lists them.
"""


def main(extra_args: list[str] | None = None) -> int:
    """`extra_args` are trainer flags appended after the demo's own (they win)."""
    if extra_args and any(arg in ("-h", "--help") for arg in extra_args):
        print(HELP, end="")  # at once: nothing is built or started for --help
        return 0
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    DEMO_DIR.mkdir(exist_ok=True)
    paths = build_stand_ins(DEMO_DIR)
    with running_service(paths["classifier"], DEMO_DIR / "service.log") as (url, _):
        print(f"reward service ready at {url}; training (configs/demo.yaml) ...", flush=True)
        from trainer.cli import train_main

        return train_main(
            [
                "--config",
                str(ROOT / "configs" / "demo.yaml"),
                "--model_name_or_path",
                str(paths["policy"]),
                "--dataset_name",
                str(paths["data"]),
                "--output_dir",
                str(DEMO_DIR / "run"),
                "--reward_url",
                url,
                *(extra_args or []),
            ]
        )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
