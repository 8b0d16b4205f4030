"""Where a model comes from: a Hugging Face hub id or a local directory."""

from __future__ import annotations

from pathlib import Path


def check_model_source(source: str) -> None:
    """Raise FileNotFoundError for a path that is clearly local but missing.

    Without this, transformers reports a missing directory as a malformed hub id ("Repo id must
    be in the form ..."), which sends users looking in the wrong place.
    """
    if Path(source).expanduser().exists():
        return
    if source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source:
        raise FileNotFoundError(f"the local model directory {source} does not exist")
