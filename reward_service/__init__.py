"""RLAIF reward service: batched /score endpoints for reward models."""

__version__ = "0.1.0"
