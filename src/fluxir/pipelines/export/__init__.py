"""``kedro run --pipeline=export``: FluxGen's pairs as a dataset others can load, with its card."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
