"""Kedro 1.7 / kedro-datasets 9.x: where a (possibly versioned) file dataset writes.

``AbstractVersionedDataset`` has no public "where did this save go"; ``_get_save_path()`` refuses once
the file exists, so the versioned path of the run's save version is asked for instead. kedro-datasets'
file datasets keep their filesystem, protocol and save arguments in private attributes; ``save_target``
reads them for a dataset that writes its file itself (``fluxir.datasets.DurableParquetDataset``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluxir.compat import require

require("kedro", ">=1.7,<1.8", __name__)
require("kedro-datasets", ">=9,<10", __name__)


def saved_path(dataset: Any) -> Path | None:
    """The file or folder a (possibly versioned) file dataset just wrote, or None for non-file datasets."""
    if getattr(dataset, "_version", None) is not None:
        return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)) if filepath is not None else None


def loaded_path(dataset: Any) -> Path | None:
    """The file or folder a (possibly versioned) file dataset loads: the latest version unless one was pinned
    (``--load-versions``); None for non-file datasets or a versioned one with no version saved."""
    from kedro.io.core import DatasetError

    if getattr(dataset, "_version", None) is not None:
        try:
            return Path(str(dataset._get_load_path()))
        except DatasetError:
            return None
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)) if filepath is not None else None


@dataclass(frozen=True)
class SaveTarget:
    """Where a kedro-datasets file dataset's ``save`` goes now: ``path`` (the run's save version for a
    versioned one; Kedro refuses a version that exists), its fsspec filesystem and arguments."""

    path: str
    local: bool  # protocol "file": a path of this machine's filesystem
    versioned: bool
    fs: Any
    open_args: dict[str, Any]
    save_args: dict[str, Any]


def save_target(dataset: Any) -> SaveTarget:
    """The ``SaveTarget`` of a kedro-datasets file dataset (``pandas.ParquetDataset`` and its kind)."""
    from kedro.io.core import get_filepath_str

    return SaveTarget(
        path=get_filepath_str(dataset._get_save_path(), dataset._protocol),
        local=dataset._protocol == "file",
        versioned=dataset._version is not None,
        fs=dataset._fs,
        open_args=dict(dataset._fs_open_args_save),
        save_args=dict(dataset._save_args),
    )


def invalidate_cache(dataset: Any) -> None:
    """Drop the fsspec listing cache of a file dataset after it wrote (as its own ``save`` does)."""
    dataset._invalidate_cache()
