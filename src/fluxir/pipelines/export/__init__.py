"""``kedro run --pipeline=export``: FluxGen's pairs as a dataset with its card; ``--pipeline=export_adapter``: the
trained adapter as a folder others can load."""

from .pipeline import create_adapter_pipeline as create_adapter_pipeline
from .pipeline import create_pipeline as create_pipeline
