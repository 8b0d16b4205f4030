"""RLAIF reward service: batched /score endpoints for reward models."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rlaif-reward")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
