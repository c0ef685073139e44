"""Kedro dataset that hands a node a folder it fills file by file (e.g. the IQA score parts).

Like ``ImageStoreDataset``: the catalog owns the location; the node writes (atomically) into it while it
runs, so a killed run keeps what it finished, and a versioned table is the record of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError


class FolderDataset(AbstractDataset[None, Path]):
    """``load()`` returns the folder ``path`` (created if missing) as a ``Path``."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> Path:
        self._path.mkdir(parents=True, exist_ok=True)
        return self._path

    def save(self, data: None) -> None:
        raise DatasetError("FolderDataset is read-only: nodes write files into the folder it loads")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
