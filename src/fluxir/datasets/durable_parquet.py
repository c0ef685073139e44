"""The project's parquet tables (run records: generated images, IQA scores, pairs, evaluation tables, training
history) written so that a table that exists is complete, even after a power loss.

``DurableParquetDataset`` is kedro-datasets' ``pandas.ParquetDataset`` whose save goes through
``write_parquet``: the table is written to a temporary file in the same folder, flushed to the disk (fsync),
renamed onto its path and the folder flushed (``fluxir.io.atomic.atomic_file``); a versioned table also flushes
the folder above (the new version folder's entry). A failed write leaves nothing at the path. Remote
filesystems (s3://, gs://) keep the parent's write: their objects appear whole or not at all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from kedro.io import DatasetError
from kedro_datasets.pandas import ParquetDataset

from fluxir.compat import invalidate_cache, save_target
from fluxir.io.atomic import atomic_file, fsync_dir


def write_parquet(path: str | Path, data: pd.DataFrame, fsync_parent: bool = False, **save_args: Any) -> Path:
    """``data.to_parquet(path, **save_args)`` atomically and durably; ``fsync_parent`` also flushes the folder
    above ``path``'s (a folder created for this file, e.g. a Kedro version folder)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        data.to_parquet(tmp, **save_args)
    if fsync_parent:
        fsync_dir(path.parent.parent)
    return path


class DurableParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` (same arguments, same files) with an atomic, fsynced save."""

    def save(self, data: pd.DataFrame) -> None:
        target = save_target(self)
        if "partition_cols" in target.save_args:
            raise DatasetError(
                f"{type(self).__name__} does not support save argument 'partition_cols'; use kedro's PartitionedDataset"
            )
        if target.local and Path(target.path).is_dir():
            raise DatasetError(f"{type(self).__name__}: {target.path} is a folder; a table is one file")
        if target.local:
            write_parquet(target.path, data, fsync_parent=target.versioned, **target.save_args)
        else:
            with target.fs.open(target.path, **target.open_args) as file:
                data.to_parquet(file, **target.save_args)
        invalidate_cache(self)
