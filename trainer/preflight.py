"""Checks run before any model loads, so that a wrong path, URL or key costs seconds, not the minutes
of loading an 8B policy, and is reported as one line that says what to fix."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import httpx
from trl import ModelConfig

from shared.client import RetryPolicy, RewardClient, parse_base_urls
from shared.errors import RewardClientError, RewardRequestError
from trainer.checkpoints import checkpoints
from trainer.config import RLAIFArguments
from trainer.data import DatasetError, load_source, usable_rows
from trainer.model_check import ModelPathError, check_model_path
from trainer.run_dir import last_checkpoint

logger = logging.getLogger(__name__)
READY_POLL_S = 2.0


class PreflightError(Exception):
    """A setting that cannot work; the message is the one line the user sees."""


def check_dataset(args: RLAIFArguments) -> None:
    """The dataset loads and keeps at least 2 usable prompts after the filters (the token-length
    filter needs the tokenizer and runs before the models load, in the trainers)."""
    try:
        source = load_source(
            args.dataset_name or "Anthropic/hh-rlhf", args.dataset_train_split, args.dataset_config
        )
        usable_rows(source, args.min_dialogue_chars, args.max_dialogue_chars)
    except DatasetError as exc:
        raise PreflightError(f"--dataset_name: {exc}") from exc


def check_output_dir(output_dir: str) -> None:
    """The run can write there (or create it): found now, not after minutes of loading. Tried with
    a temporary file in the folder or its nearest existing parent, so nothing is left behind (the
    permission bits alone say nothing to root or about a read-only mount)."""
    folder = Path(output_dir).expanduser().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise PreflightError(
            f"--output_dir {folder}: not writable ({exc.strerror or exc}); choose a folder you can write to"
        ) from exc


def check_reward_service(args: RLAIFArguments) -> None:
    """At least one URL serves every scorer the run needs and accepts the key; waits (up to
    --reward_max_wait_s) for a service that is still loading its models."""
    try:
        urls = parse_base_urls(args.reward_url)
    except ValueError as exc:
        raise PreflightError(f"--reward_url: {exc}") from exc
    problems = {url: _readiness_problem(url, args.reward_max_wait_s) for url in urls}
    ready = [url for url, problem in problems.items() if problem is None]
    if not ready:
        raise PreflightError("; ".join(f"{url}: {problem}" for url, problem in problems.items()))
    for url, problem in problems.items():
        if problem is not None:
            logger.warning(
                "reward service %s is not usable now (%s); training starts with %s", url, problem, ready
            )
    _check_scorers(args, ready[0])


def check_trained_model(path: Path) -> None:
    """`rlaif-eval`: `path` must hold a trained policy (full model or LoRA adapter)."""
    if not (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        raise PreflightError(
            f"no trained model in {path} (no config.json or adapter_config.json): train first "
            "(rlaif-train --output_dir ...), or pass --eval_model <directory>"
        )


def _readiness_problem(url: str, max_wait_s: float) -> str | None:
    """None once GET /readyz answers 200; else what is wrong (after waiting for a loading service)."""
    deadline = time.monotonic() + max_wait_s
    while True:
        try:
            response = httpx.get(url + "/readyz", timeout=10)
        except httpx.TransportError as exc:
            return f"not reachable ({type(exc).__name__}); start the service or fix --reward_url"
        if response.status_code == 200:
            return None
        if response.status_code in (404, 405):
            return (
                f"GET /readyz answered {response.status_code}: --reward_url must be the service's base "
                "URL (e.g. http://host:8000), without a path such as /score"
            )
        if response.status_code != 503 or time.monotonic() >= deadline:
            return f"not ready (GET /readyz answered {response.status_code}: {response.text[:200]})"
        time.sleep(READY_POLL_S)


def _check_scorers(args: RLAIFArguments, url: str) -> None:
    retry = RetryPolicy(max_attempts=3, max_total_s=30)
    try:
        with RewardClient(url, api_key=args.api_key(), retry=retry) as client:
            served = {info.name: info for info in client.scorers().scorers}
    except RewardRequestError as exc:
        if exc.status_code in (401, 403):
            raise PreflightError(
                f"{url} refused the API key ({exc.status_code}): set --reward_api_key or REWARD_API_KEY "
                "to the service's REWARD_API_KEY"
            ) from exc
        raise PreflightError(f"{url}: GET /scorers failed: {exc}") from exc
    except RewardClientError as exc:
        raise PreflightError(f"{url}: GET /scorers failed: {exc}") from exc
    # --reward_scorer may name several scorers (comma-separated), one reward function each.
    named = [("--reward_scorer", name) for name in args.reward_scorers() if name is not None]
    if args.eval_scorer is not None:
        named.append(("--eval_scorer", args.eval_scorer))
    for flag, name in named:
        if name not in served:
            raise PreflightError(f"{flag} {name!r}: {url} serves {', '.join(served)}")
        if not served[name].ready:
            raise PreflightError(f"{flag} {name!r} is not ready on {url}: {served[name].error or 'loading'}")


def check_resume(args: RLAIFArguments, output_dir: str) -> None:
    if args.resume and last_checkpoint(output_dir, value_model=args.algorithm == "ppo") is None:
        some = "no complete checkpoint-* folder" if checkpoints(output_dir) else "no checkpoint-* folder"
        raise PreflightError(
            f"--resume: {some} in {output_dir} (rerun without --resume, or use "
            "--auto_resume to resume only when there is a checkpoint)"
        )


def check_models(model_config: ModelConfig, args: RLAIFArguments) -> None:
    try:
        remote_code = bool(getattr(model_config, "trust_remote_code", False))
        revision = model_config.model_revision
        base = model_config.model_name_or_path or ""
        check_model_path("--model_name_or_path", base, revision, "policy", remote_code)
        if args.algorithm == "ppo":  # the critic: its own backbone, or the policy's
            check_model_path(
                "--value_model_path" if args.value_model_path else "--model_name_or_path",
                args.value_model_path or base,
                revision,
                "value",
                remote_code,
            )
    except ModelPathError as exc:
        raise PreflightError(str(exc)) from exc


def run_preflight(args: RLAIFArguments, model_config: ModelConfig, output_dir: str | None = None) -> None:
    """Every check that needs no model, cheapest first; `output_dir`: a training run's folder."""
    if output_dir is not None:
        check_resume(args, output_dir)
        check_output_dir(output_dir)
    check_dataset(args)
    check_reward_service(args)
    check_models(model_config, args)
