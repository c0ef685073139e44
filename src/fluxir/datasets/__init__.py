"""The dataset types the catalog names (``type: fluxir.datasets.<Name>``): folders a node fills or reads, parquet
tables that are complete once they exist, and the trained FluxIR adapter."""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import fsspec
import pandas as pd
from kedro.io import AbstractDataset
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    VersionNotFoundError,
    get_filepath_str,
    get_protocol_and_path,
)
from kedro_datasets.pandas import ParquetDataset

from fluxir.compat import invalidate_cache, save_target
from fluxir.io.atomic import atomic_file, fsync_dir
from fluxir.io.store import ImageStore

if TYPE_CHECKING:  # torch is imported on load/save only, so building the catalog (kedro viz) stays light
    from fluxir.models.adapter import FluxIRAdapter

CONFIG_NAME = "config.json"  # == fluxir.models.adapter.CONFIG_NAME (checked in tests/models/test_adapter.py)


# Folders: the catalog owns the location, the node writes into it file by file (atomically) while it runs, so a
# killed run keeps what it finished. A folder a node only reads is ``create: false``: the node names what is missing.


class FolderDataset(AbstractDataset[None, Path]):
    """``load()`` returns the folder ``path``, created if missing unless ``create`` is false. ``path`` may be null
    for an input given per run (``${runtime_params:...}`` without a default): the node reading None says what to set."""

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
        raise DatasetError(f"{type(self).__name__} is read-only: nodes write files into the folder it loads")

    def _exists(self) -> bool:
        return self._path is not None and self._path.exists()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path) if self._path else None, "create": self._create}


class BenchmarkFoldersDataset(AbstractDataset[None, dict[str, Path | None]]):
    """One downloaded test set, ``{"hq": Path | None, "lq": Path | None}``; never created: a missing folder skips
    the benchmark (``fluxir.evaluation.testsets``)."""

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


class ImageStoreDataset(FolderDataset):
    """``load()`` returns an ``ImageStore`` rooted at ``path``; nodes write images through it."""

    def load(self) -> ImageStore:
        return ImageStore(super().load())


def write_parquet(path: str | Path, data: pd.DataFrame, fsync_parent: bool = False, **save_args: Any) -> Path:
    """``data.to_parquet(path, **save_args)`` to a temporary file, fsynced and renamed (nothing at ``path`` after a
    failure, even a power loss); ``fsync_parent`` also flushes the folder above (e.g. a new Kedro version folder)."""
    path = Path(path)
    with atomic_file(path) as tmp:
        data.to_parquet(tmp, **save_args)
    if fsync_parent:
        fsync_dir(path.parent.parent)
    return path


class DurableParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` (same arguments, same files) whose save is ``write_parquet``: the run records
    (generated images, scores, pairs, evaluation tables) are complete wherever they exist. Remote filesystems keep
    the parent's write: their objects appear whole or not at all."""

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


class MissingAdapter:
    """Stands for an adapter that was never trained; ``message`` says what to run."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"MissingAdapter({self.message!r})"


def require_adapter(adapter: Any, what: str = "this") -> Any:
    """``adapter``, or ValueError with the ``MissingAdapter``'s message when none was trained."""
    if isinstance(adapter, MissingAdapter):
        raise ValueError(f"{what} needs a trained FluxIR adapter: {adapter.message}")
    return adapter


class FluxIRAdapterDataset(AbstractVersionedDataset["FluxIRAdapter", "FluxIRAdapter"]):
    """A ``FluxIRAdapter`` folder (``config.json`` + ``adapter.safetensors``, never Flux's weights) on any fsspec
    filesystem, saved through a temporary folder renamed into place.

    ``load_args``: ``device`` (default "cpu") and ``dtype`` (None keeps the saved one). Loading the latest version
    when none was saved gives a ``MissingAdapter``, so nodes that restore without an adapter (flux_controlnet,
    realesrgan) still run and ``require_adapter`` raises where one is needed; a ``--load-versions`` that does not
    exist still fails at load.
    """

    DEFAULT_LOAD_ARGS: ClassVar[dict[str, Any]] = {"device": "cpu", "dtype": None}

    def __init__(
        self,
        *,
        filepath: str | os.PathLike,
        load_args: dict[str, Any] | None = None,
        version: Version | None = None,
        credentials: dict[str, Any] | None = None,
        fs_args: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        if unknown := set(load_args) - set(self.DEFAULT_LOAD_ARGS):
            raise DatasetError(
                f"unknown load_args {sorted(unknown)} for FluxIRAdapterDataset; valid: {sorted(self.DEFAULT_LOAD_ARGS)}"
            )
        protocol, path = get_protocol_and_path(str(filepath), version)
        fs_args = deepcopy(fs_args) or {}
        if protocol == "file":
            fs_args.setdefault("auto_mkdir", True)
        self._protocol = protocol
        self._fs = fsspec.filesystem(protocol, **(deepcopy(credentials) or {}), **fs_args)
        self._load_args = load_args
        self.metadata = metadata
        super().__init__(
            filepath=PurePosixPath(path), version=version, exists_function=self._fs.exists, glob_function=self._fs.glob
        )

    def load(self) -> FluxIRAdapter | MissingAdapter:
        import torch

        from fluxir.models.adapter import load_adapter

        try:
            load_path = self._get_load_path()
        except VersionNotFoundError:  # only the latest version can be missing (a named one fails in load_adapter)
            return MissingAdapter(
                f"no trained FluxIR adapter under {self._filepath}: run `kedro run --pipeline=train` "
                "first, or pick one with `--load-versions=fluxir_adapter:<version>`; without one, "
                "restore with public weights: restore.method=flux_controlnet or realesrgan "
                "(evaluate.methods without fluxir)"
            )
        path = get_filepath_str(load_path, self._protocol)
        dtype = self._load_args["dtype"]
        if isinstance(dtype, str):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise DatasetError(f"load_args.dtype {dtype!r} is not a torch dtype name (e.g. 'float32')")
            dtype = getattr(torch, dtype)
        return load_adapter(path, fs=self._fs, device=self._load_args["device"], dtype=dtype)

    def save(self, data: FluxIRAdapter) -> None:
        from fluxir.models.adapter import FluxIRAdapter, save_adapter

        if not isinstance(data, FluxIRAdapter):
            raise DatasetError(f"FluxIRAdapterDataset saves a FluxIRAdapter, got {type(data).__name__}")
        path = get_filepath_str(self._get_save_path(), self._protocol)
        save_adapter(data, path, fs=self._fs)
        self._fs.invalidate_cache(get_filepath_str(self._filepath, self._protocol))

    def versions(self) -> list[str]:
        """Saved versions holding a complete adapter, newest first; empty when unversioned or nothing was saved."""
        root = get_filepath_str(self._filepath, self._protocol)
        if self._version is None or not self._fs.isdir(root):
            return []
        name = PurePosixPath(root).name
        found = [PurePosixPath(p).name for p in self._fs.ls(root, detail=False)]
        return sorted((v for v in found if self._fs.exists(f"{root}/{v}/{name}/{CONFIG_NAME}")), reverse=True)

    def _exists(self) -> bool:
        try:
            path = get_filepath_str(self._get_load_path(), self._protocol)
        except DatasetError:
            return False
        return self._fs.exists(f"{path}/{CONFIG_NAME}")

    def _describe(self) -> dict[str, Any]:
        return {
            "filepath": self._filepath,
            "protocol": self._protocol,
            "load_args": self._load_args,
            "version": self._version,
        }
