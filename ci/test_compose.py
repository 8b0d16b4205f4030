"""The container tier: `docker compose up` the way users run it, on a CPU machine.

Both images are built from the project's Dockerfiles unchanged: only `BASE_IMAGE` differs, a local
CPU stand-in for pytorch/pytorch (ci/base_image.sh). Compose runs docker-compose.yml +
docker-compose.cpu.yml + ci/compose.test.yml (stand-in models and data mounted at /standins, a
host folder for /outputs), under its own project name so that it never touches a user's project.
Each test brings up what it needs itself (`up --wait` is a no-op for what already runs).

Run with `make compose-test` (it starts a Docker engine first, see ci/engine.sh).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from harness.live_server import free_port

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "rlaif-ci"
FILES = ("docker-compose.yml", "docker-compose.cpu.yml", "ci/compose.test.yml")
STOP_GRACE_S = 40  # docker-compose.yml's stop_grace_period for the reward service
SERVER_ERROR_LINE = re.compile(r'"(?:GET|POST|HEAD|PUT|DELETE) [^"]*" 500\b')


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass
class Stack:
    """The compose project under test: its environment, its folders, and the published port."""

    env: dict[str, str]
    standins: Path
    outputs: Path
    port: int
    commit: str
    run_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def compose(
        self, *args: str, timeout: float = 600, check: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        argv = ["docker", "compose", "-p", PROJECT, *(a for f in FILES for a in ("-f", f)), *args]
        done = subprocess.run(
            argv, cwd=ROOT, env={**self.env, **env}, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done

    def containers(self, service: str) -> list[dict[str, Any]]:
        done = self.compose("ps", "-a", "--format", "json", service)
        text = done.stdout.strip()
        if not text:
            return []
        # Compose prints one JSON object per line (older releases: one JSON array).
        rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
        return sorted(rows, key=lambda row: row["Name"])

    def inspect(self, container: str) -> dict[str, Any]:
        done = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True)
        return json.loads(done.stdout)[0]

    def logs(self, service: str, since: str | None = None, timestamps: bool = False) -> str:
        args = ["logs", "--no-color", "--no-log-prefix"] + (["--since", since] if since else [])
        args += ["--timestamps"] if timestamps else []
        args.append(service)
        done = self.compose(*args)
        return done.stdout + done.stderr

    def up_reward(self) -> None:
        self.compose("up", "-d", "--wait", "reward", timeout=600)

    def run_trainers(self, run_name: str, replicas: int, trainer_args: str = "") -> None:
        """Start `replicas` trainers writing to /outputs/<run_name>-N (compose recreates them)."""
        self.run_env = {"RLAIF_RUN_NAME": run_name, "RLAIF_TRAINER_ARGS": trainer_args}
        self.compose("up", "-d", "--scale", f"trainer={replicas}", "trainer", **self.run_env)

    def wait_trainers_exit(self, timeout_s: float) -> list[dict[str, Any]]:
        def exited() -> list[dict[str, Any]] | None:
            rows = self.containers("trainer")
            return rows if rows and all(row["State"] == "exited" for row in rows) else None

        return wait_for("the trainers to exit", exited, timeout_s, every_s=3)

    def metric_sum(self, name: str, **labels: str) -> float:
        text = httpx.get(self.url + "/metrics", timeout=10).text
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{key}="{value}"' in line for key, value in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def lines_around(log: str, needles: tuple[str, ...], context: int = 12) -> str:
    """The lines of `log` that contain any of `needles`, each with `context` lines either side
    (a failure's message shows where it happened, not the log's unrelated tail)."""
    lines = log.splitlines()
    hits = [i for i, line in enumerate(lines) if any(needle in line for needle in needles)]
    shown = sorted({j for i in hits for j in range(max(0, i - context), min(len(lines), i + context + 1))})
    return "\n".join(lines[j] for j in shown)


def build_standins(folder: Path) -> None:
    """The tiny classifier, policy and hh-shaped data the tests use, and the tier's trainer config."""
    from demo.hh_data import write_hh_jsonl
    from demo.tiny_models import build_tiny_roberta_classifier
    from demo.tiny_policy import build_tiny_policy

    build_tiny_roberta_classifier(folder / "classifier", train_steps=0)
    build_tiny_policy(folder / "policy")
    write_hh_jsonl(folder / "hh.jsonl", n=60)
    shutil.copy(ROOT / "ci" / "trainer.test.yaml", folder / "trainer.yaml")
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def base_image() -> str:
    if os.environ.get("RLAIF_TEST_BASE_IMAGE"):
        return os.environ["RLAIF_TEST_BASE_IMAGE"]
    done = subprocess.run([str(ROOT / "ci" / "base_image.sh")], capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if shutil.which("docker") is None or subprocess.run(["docker", "info"], capture_output=True).returncode:
        pytest.fail("no Docker engine answers: run `make compose-test`, which starts one (ci/engine.sh)")
    standins = tmp_path_factory.mktemp("standins")
    build_standins(standins)
    outputs = tmp_path_factory.mktemp("outputs")
    outputs.chmod(0o777)  # the images run as uid 1000
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("RLAIF_", "REWARD_", "COMPOSE_"))},
        "RLAIF_TEST_BASE_IMAGE": base_image(),
        "RLAIF_TEST_STANDINS": str(standins),
        "RLAIF_TEST_OUTPUTS": str(outputs),
        "RLAIF_REWARD_PORT": f"127.0.0.1:{port}",
        "RLAIF_TRAINER_CONFIG": "/standins/trainer.yaml",
        "RLAIF_SOURCE_COMMIT": commit,
    }
    project = Stack(env=env, standins=standins, outputs=outputs, port=port, commit=commit)
    project.compose("down", "-v", "--remove-orphans", timeout=120)
    project.compose("build", timeout=2400)
    try:
        yield project
    finally:
        for service in ("reward", "trainer"):
            print(f"----- {service} logs (last 80 lines) -----")
            print("\n".join(project.logs(service).splitlines()[-80:]))
        project.compose("down", "-v", "--remove-orphans", timeout=180, check=False)


def rescored(stack: Stack, texts: list[str]) -> list[float]:
    answer = httpx.post(stack.url + "/score", json={"texts": texts}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["scores"]


def test_reward_container_turns_healthy_and_scores_on_the_published_port(stack: Stack) -> None:
    from harness.reference_scoring import DirectScorer

    stack.up_reward()
    [reward] = stack.containers("reward")
    assert stack.inspect(reward["Name"])["State"]["Health"]["Status"] == "healthy"
    assert httpx.get(stack.url + "/readyz", timeout=5).status_code == 200
    texts = ["I like you.", "You are terrible and i hate you.", "Thanks for the help!"]
    direct = DirectScorer(stack.standins / "classifier")
    assert rescored(stack, texts) == pytest.approx([direct.nothate_logit(t) for t in texts], abs=1e-4)
    info = httpx.get(stack.url + "/scorers", timeout=5).json()
    assert "/standins/classifier" in json.dumps(info)


def test_two_trainers_train_through_the_service_each_in_its_own_folder(stack: Stack) -> None:
    stack.up_reward()
    scored_before = stack.metric_sum("reward_requests_total", route="/score", status="200")
    stack.run_trainers("pair", replicas=2)
    rows = stack.wait_trainers_exit(timeout_s=900)
    assert [row["ExitCode"] for row in rows] == [0, 0], stack.logs("trainer")
    scored = stack.metric_sum("reward_requests_total", route="/score", status="200") - scored_before
    steps = 24 // 4  # trainer.test.yaml: total_episodes / per_device_train_batch_size
    # Every training step and the evaluation before and after called the service, from both.
    assert scored >= 2 * (steps + 2), scored
    for folder in ("pair-1", "pair-2"):
        run = stack.outputs / folder
        report = json.loads((run / "report.json").read_text())
        assert report["run"]["commit"] == stack.commit, report["run"]
        assert report["run"]["steps"] == steps
        rows_written = [json.loads(line) for line in (run / "responses.jsonl").read_text().splitlines()]
        assert len(rows_written) == report["n"] == 8
        # The report's scores are the service's scores of the texts it shows.
        for side in ("before", "after"):
            texts = [row[side] for row in rows_written]
            assert rescored(stack, texts) == pytest.approx(
                [row[f"{side}_score"] for row in rows_written], abs=1e-4
            )
    assert not (stack.outputs / "pair-3").exists()


def test_a_killed_trainer_continues_from_its_checkpoint_and_a_finished_run_is_not_repeated(
    stack: Stack,
) -> None:
    stack.up_reward()
    run = stack.outputs / "resume-1"
    stack.run_trainers("resume", replicas=1, trainer_args="--total_episodes 64")  # 16 steps
    wait_for("checkpoint-4", lambda: (run / "checkpoint-4" / "trainer_state.json").exists(), 600, 0.2)
    stack.compose("kill", "-s", "SIGKILL", "trainer", **stack.run_env)
    [killed] = stack.wait_trainers_exit(timeout_s=60)
    assert killed["ExitCode"] == 137
    assert not (run / "run_finished.json").exists(), "the run finished before it could be killed"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*"))

    restarted_at = stack.inspect(killed["Name"])["State"]["FinishedAt"]
    stack.compose("up", "-d", "--scale", "trainer=1", "trainer", **stack.run_env)
    [resumed] = stack.wait_trainers_exit(timeout_s=900)
    log = stack.logs("trainer", since=restarted_at)
    assert resumed["ExitCode"] == 0, log
    match = re.search(r"resuming from \S*checkpoint-(\d+) at step (\d+) of 16", log)
    assert match, log
    assert int(match.group(1)) in checkpoints and int(match.group(1)) >= 4
    finished = json.loads((run / "run_finished.json").read_text())
    assert finished["global_step"] == 16
    report = run / "report.json"
    written = report.stat().st_mtime

    again_at = stack.inspect(resumed["Name"])["State"]["FinishedAt"]
    stack.compose("up", "-d", "--scale", "trainer=1", "trainer", **stack.run_env)
    [repeated] = stack.wait_trainers_exit(timeout_s=300)
    log = stack.logs("trainer", since=again_at)
    assert repeated["ExitCode"] == 0, log
    assert "finished at step 16" in log, log
    assert report.stat().st_mtime == written
    assert not (stack.outputs / "resume-2").exists()


def test_prometheus_scrapes_the_service_and_every_dashboard_query_runs(stack: Stack, tmp_path: Path) -> None:
    """The monitoring profile's Prometheus config and Grafana dashboard, against the running service.

    Their images cannot be pulled here, so Prometheus is Debian's build (ci/engine.sh installs it),
    given monitoring/prometheus.yml with only the target and the key file's path changed. Grafana
    itself is not checked (no Debian or PyPI build of it)."""
    import yaml

    prometheus = shutil.which("prometheus")
    assert prometheus, "Debian's prometheus is not installed (ci/engine.sh installs it)"
    stack.up_reward()
    rescored(stack, ["warm up the metrics"])
    config = yaml.safe_load((ROOT / "monitoring" / "prometheus.yml").read_text())
    [job] = config["scrape_configs"]
    assert [c["targets"] for c in job["static_configs"]] == [["reward:8000"]]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{stack.port}"]}]
    key_file = tmp_path / "reward_api_key"
    key_file.write_text("")
    job["authorization"]["credentials_file"] = str(key_file)
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    prom_port = free_port()
    server = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    api = f"http://127.0.0.1:{prom_port}/api/v1"
    try:

        def scraped() -> bool:
            try:
                targets = httpx.get(api + "/targets", timeout=2).json()["data"]["activeTargets"]
            except (httpx.HTTPError, ValueError, KeyError):
                return False
            return bool(targets) and all(t["health"] == "up" for t in targets)

        wait_for("Prometheus to scrape the service", scraped, 60)

        def scraped_under_traffic() -> bool:
            # rate() needs two samples in its window: score between scrapes until there are four.
            rescored(stack, ["scored between two scrapes"])
            found = httpx.get(api + "/query", params={"query": "count_over_time(up[1m])"}, timeout=5)
            series = found.json()["data"]["result"]
            return bool(series) and float(series[0]["value"][1]) >= 4

        wait_for("four scrapes", scraped_under_traffic, 90)
        dashboard = json.loads(
            (ROOT / "monitoring" / "grafana" / "dashboards" / "reward-service.json").read_text()
        )
        queries = [
            target["expr"]
            for panel in dashboard["panels"]
            for target in panel.get("targets", [])
            if target.get("expr")
        ]
        assert queries
        substitutions = {"$scorer": ".*", "$instance": ".*", "$__rate_interval": "1m", "$__interval": "15s"}
        empty = []
        for expr in queries:
            for variable, value in substitutions.items():
                expr = expr.replace(variable, value)
            result = httpx.get(api + "/query", params={"query": expr}, timeout=10).json()
            assert result["status"] == "success", (expr, result)
            if not result["data"]["result"]:
                empty.append(expr)
        # Panels of events that did not happen (errors, OOM splits, judge calls) may be empty;
        # the traffic panels may not.
        for core in ("reward_requests_total", "reward_items_total", "reward_request_latency_seconds_bucket"):
            assert any(core in expr for expr in queries), core
            assert not [expr for expr in empty if core in expr and "status!~" not in expr], (core, empty)
        assert len(empty) < len(queries) / 2, (
            f"{len(empty)} of {len(queries)} queries returned nothing: {empty}"
        )
        up = httpx.get(api + "/query", params={"query": "up"}, timeout=10).json()["data"]["result"]
        assert [r["value"][1] for r in up] == ["1"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_compose_stop_while_trainers_score_exits_cleanly_and_answers_no_500(stack: Stack) -> None:
    stack.up_reward()
    [reward] = stack.containers("reward")
    scored_before = stack.metric_sum("reward_requests_total", route="/score")
    stack.run_trainers("stop", replicas=2, trainer_args="--total_episodes 4000")
    wait_for(
        "the trainers' scoring requests",
        lambda: stack.metric_sum("reward_requests_total", route="/score") - scored_before >= 6,
        600,
    )
    # The trainers score every few seconds; clients on the host keep requests in flight meanwhile,
    # so that the stop lands on requests being scored.
    answers: list[tuple[float, float, int | str]] = []
    stopping = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=60) as http:
            while not stopping.is_set():
                started = time.monotonic()
                try:
                    status: int | str = http.post(
                        stack.url + "/score", json={"texts": ["hello"] * 64}
                    ).status_code
                except httpx.TransportError as error:  # refused once the port is closed
                    status = type(error).__name__
                answers.append((started, time.monotonic(), status))

    clients = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for thread in clients:
        thread.start()
    time.sleep(2)
    assert stack.metric_sum("reward_requests_total", status="500") == 0
    started = time.monotonic()
    stack.compose("stop", "reward", timeout=STOP_GRACE_S + 30)
    took = time.monotonic() - started
    stopping.set()
    for thread in clients:
        thread.join(timeout=70)
    state = stack.inspect(reward["Name"])["State"]
    log = stack.logs("reward")
    assert state["ExitCode"] == 0, log[-4000:]
    assert took < STOP_GRACE_S, f"stop took {took:.1f} s"
    assert not SERVER_ERROR_LINE.findall(log), log[-4000:]
    statuses = {status for _, _, status in answers}
    assert statuses <= {200, 503, "ConnectError", "RemoteProtocolError", "ReadError"}, statuses
    assert any(begin < started < end for begin, end, _ in answers), "no request was in flight at the stop"
    assert sum(status == 200 for _, _, status in answers) > 0
    trainer_log = stack.logs("trainer", timestamps=True)
    # The client's own words for a refusal; a bare " 500" would also match a logged `'episode': 500`.
    refused = lines_around(trainer_log, ("RewardScoringError", "answered 500", "answered 424"))
    assert not refused, f"{refused}\n----- reward log -----\n{log[-6000:]}"
    stack.compose("stop", "trainer", timeout=120, **stack.run_env)
