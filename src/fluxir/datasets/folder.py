"""Kedro datasets that hand a node a folder: one it fills file by file (e.g. the IQA score parts, the
checkpoints, the generated images as an ``ImageStore`` of sharded files) or one it only reads (a benchmark, the
images to restore).

The catalog owns the location; the node writes (atomically) into it while it runs, so a killed run keeps what
it finished, and a versioned table (e.g. the parquet manifest of the generated images) is the record of the run.
Folders a node only reads are declared ``create: false``: loading never makes them, and the node that reads one
says what is missing (a benchmark is then skipped, a restore stops with the fix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError

from fluxir.io.store import ImageStore


class FolderDataset(AbstractDataset[None, Path]):
    """``load()`` returns the folder ``path`` as a ``Path``, created if missing unless ``create`` is false.

    ``path`` may be null for an input given per run (``${runtime_params:...}`` without a default): ``load()``
    then returns None and the node that reads it names what to set.
    """

    def __init__(self, path: str | None, create: bool = True, metadata: dict[str, Any] | None = None) -> None:
        if create and not path:
            raise DatasetError("FolderDataset: a folder the run writes into needs a path")
        self._path = Path(path) if path else None
        self._create = create
        self.metadata = metadata

    def load(self) -> Path | None:
        if self._create:
            self._path.mkdir(parents=True, exist_ok=True)
        return self._path

    def save(self, data: None) -> None:
        raise DatasetError("FolderDataset is read-only: nodes write files into the folder it loads")

    def _exists(self) -> bool:
        return self._path is not None and self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path) if self._path else None, "create": self._create}


class BenchmarkFoldersDataset(AbstractDataset[None, dict[str, Path | None]]):
    """The downloaded folders of one test set: ``load()`` returns ``{"hq": Path | None, "lq": Path | None}``.

    Only read: nothing is created, and a missing folder skips the benchmark (``fluxir.evaluation.testsets``).
    ``hq_path`` is the HQ folder (DIV2K's HQ images for a synthetic benchmark), ``lq_path`` the LQ folder;
    a benchmark kind without one leaves it out.
    """

    def __init__(
        self, hq_path: str | None = None, lq_path: str | None = None, metadata: dict[str, Any] | None = None
    ) -> None:
        self._folders = {"hq": Path(hq_path) if hq_path else None, "lq": Path(lq_path) if lq_path else None}
        self.metadata = metadata

    def load(self) -> dict[str, Path | None]:
        return dict(self._folders)

    def save(self, data: Any) -> None:
        raise DatasetError("BenchmarkFoldersDataset is read-only: benchmark files are downloaded, never written")

    def _exists(self) -> bool:
        return all(p.is_dir() for p in self._folders.values() if p is not None)

    def _describe(self) -> dict[str, Any]:
        return {key: str(path) if path else None for key, path in self._folders.items()}


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
