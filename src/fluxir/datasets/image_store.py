"""Kedro dataset that hands a node an ``ImageStore`` (a folder of sharded image files).

Image pixels are written file by file while a node runs (so a killed run keeps what it finished);
the catalog still owns the location, and a versioned parquet manifest is the record of what a run made.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from fluxir.io.store import ImageStore


class ImageStoreDataset(AbstractDataset[None, ImageStore]):
    """``load()`` returns an ``ImageStore`` rooted at ``path``; nodes write images through it."""

    def __init__(self, path: str, metadata: dict[str, Any] | None = None) -> None:
        self._path = Path(path)
        self.metadata = metadata

    def load(self) -> ImageStore:
        self._path.mkdir(parents=True, exist_ok=True)
        return ImageStore(self._path)

    def save(self, data: None) -> None:
        raise DatasetError("ImageStoreDataset is read-only: nodes write images through the ImageStore it loads")

    def _exists(self) -> bool:
        return self._path.is_dir()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}
