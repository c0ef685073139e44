"""``kedro run --pipeline=export_adapter``: the trained FluxIR adapter as a folder others can load, with its card."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
