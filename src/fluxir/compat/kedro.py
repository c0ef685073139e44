"""Kedro 1.7: the file a (possibly versioned) dataset has just written.

``AbstractVersionedDataset`` has no public "where did this save go"; ``_get_save_path()`` refuses once
the file exists, so the versioned path of the run's save version is asked for instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fluxir.compat import require

require("kedro", ">=1.7,<1.8", __name__)


def saved_path(dataset: Any) -> Path | None:
    """The file or folder a (possibly versioned) file dataset just wrote, or None for non-file datasets."""
    if getattr(dataset, "_version", None) is not None:
        return Path(str(dataset._get_versioned_path(dataset.resolve_save_version())))
    filepath = getattr(dataset, "_filepath", None)
    return Path(str(filepath)) if filepath is not None else None
