"""Stand-in models built once and kept on disk, keyed by a hash of what builds them.

The key covers the builder's arguments, the source of the modules that build and train the model,
and the versions of the libraries that write it, so a change to any of them builds afresh; an
unchanged builder is read back instead of trained again (within one test run and across runs).
Builds are written beside the cache entry and renamed into place, so parallel processes never see
half a model; a lock file per entry makes a second process (another pytest-xdist worker) wait for
the first one's build instead of training the same model again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from filelock import FileLock

CACHE_ENV = "RLAIF_STAND_IN_CACHE"
_LIBRARIES = ("torch", "transformers", "tokenizers")


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "rlaif-stand-ins")


def build_key(
    builder: Callable[..., object], sources: tuple[ModuleType, ...], kwargs: dict[str, object]
) -> str:
    digest = hashlib.sha256()
    digest.update(f"{builder.__module__}.{builder.__qualname__}".encode())
    digest.update(json.dumps(kwargs, sort_keys=True, default=str).encode())
    for module in (inspect.getmodule(builder), *sources):
        digest.update(inspect.getsource(module).encode())  # type: ignore[arg-type]
    for library in _LIBRARIES:
        digest.update(f"{library}=={importlib.metadata.version(library)}".encode())
    return digest.hexdigest()[:16]


def cached_build(
    name: str,
    builder: Callable[..., Path],
    sources: tuple[ModuleType, ...] = (),
    **kwargs: object,
) -> Path:
    """`builder(out_dir, **kwargs)`'s model, built into the cache once; `sources` are the modules
    besides the builder's own whose code decides what it builds (corpora, training loops)."""
    entry = cache_root() / f"{name}-{build_key(builder, sources, kwargs)}"
    if entry.is_dir():
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{entry}.lock"):
        if entry.is_dir():  # built by another process while this one waited
            return entry
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=entry.parent))
        try:
            builder(staging / "model", **kwargs)
            os.rename(staging / "model", entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return entry


def copy_of(entry: Path, out_dir: str | Path) -> Path:
    """A private copy of a cached model at `out_dir`, for a test free to write beside it."""
    out = Path(out_dir)
    shutil.copytree(entry, out, dirs_exist_ok=True)
    return out
