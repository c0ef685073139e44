"""Kedro datasets of fluxir: ``type: fluxir.datasets.FolderDataset`` (and the others below) in the catalog."""

from .catalog import (
    BenchmarkFoldersDataset,
    DurableParquetDataset,
    FluxIRAdapterDataset,
    FolderDataset,
    ImageStoreDataset,
    MissingAdapter,
    require_adapter,
    write_parquet,
)

__all__ = [
    "BenchmarkFoldersDataset",
    "DurableParquetDataset",
    "FluxIRAdapterDataset",
    "FolderDataset",
    "ImageStoreDataset",
    "MissingAdapter",
    "require_adapter",
    "write_parquet",
]
