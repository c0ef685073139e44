"""Kedro datasets of fluxir (catalog ``type: fluxir.datasets.FluxIRAdapterDataset``).

Imported lazily, so the catalog's other datasets (``fluxir.datasets.folder``, ``fluxir.datasets.durable_parquet``)
do not pull in torch and diffusers.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FluxIRAdapterDataset"]


def __getattr__(name: str) -> Any:
    if name == "FluxIRAdapterDataset":
        from .adapter_dataset import FluxIRAdapterDataset

        return FluxIRAdapterDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
