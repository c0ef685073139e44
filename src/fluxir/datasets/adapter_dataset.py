"""``FluxIRAdapterDataset``: a FluxIR adapter as a (versioned) Kedro catalog entry.

The entry's ``filepath`` is a folder holding ``config.json`` (the ``FluxIRConfig``) and
``adapter.safetensors`` (adapter weights only, never Flux's). Saving writes a temporary folder and
renames it into place, so a reader never sees half an adapter. Example ``catalog.yml``::

    fluxir_adapter:
      type: fluxir.datasets.FluxIRAdapterDataset
      filepath: data/06_models/fluxir_adapter
      versioned: true
      load_args:
        device: cuda
        dtype: float32

With ``versioned: true`` each save goes to ``filepath/<timestamp>/fluxir_adapter/`` and earlier
versions are kept. When nothing was saved yet, loading the latest version gives a ``MissingAdapter``
that says what to run: nodes that can restore without an adapter (``restore.method`` flux_controlnet /
realesrgan, ``evaluate.methods`` without fluxir) still run, and ``require_adapter`` raises its message
where one is needed. An explicit ``--load-versions`` that does not exist still fails at load.
"""

from __future__ import annotations

import os
from copy import deepcopy
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

import fsspec
from kedro.io.core import (
    AbstractVersionedDataset,
    DatasetError,
    Version,
    VersionNotFoundError,
    get_filepath_str,
    get_protocol_and_path,
)

if TYPE_CHECKING:  # torch is imported on load/save only, so building the catalog (kedro viz) stays light
    from fluxir.models.adapter import FluxIRAdapter

CONFIG_NAME = "config.json"  # == fluxir.models.adapter.CONFIG_NAME (checked in tests/models/test_adapter.py)


class MissingAdapter:
    """Stands for an adapter that was never trained; ``message`` says what to run."""

    def __init__(self, message: str) -> None:
        self.message = message

    def __repr__(self) -> str:
        return f"MissingAdapter({self.message!r})"

    def fail(self, what: str) -> None:
        raise ValueError(f"{what} needs a trained FluxIR adapter: {self.message}")


def require_adapter(adapter: Any, what: str = "this") -> Any:
    """``adapter``, or ValueError with the ``MissingAdapter``'s message when none was trained."""
    if isinstance(adapter, MissingAdapter):
        adapter.fail(what)
    return adapter


class FluxIRAdapterDataset(AbstractVersionedDataset["FluxIRAdapter", "FluxIRAdapter"]):
    """Loads / saves a ``FluxIRAdapter`` from / to a folder on any fsspec filesystem."""

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
        """
        Args:
            filepath: folder of the adapter (``config.json`` + ``adapter.safetensors``), optionally with a
                protocol prefix such as ``s3://``.
            load_args: ``device`` (default "cpu") and ``dtype`` (None keeps the saved dtype, or a name
                such as "float32" / "bfloat16") of the loaded adapter.
            version: Kedro version; ``Version(None, None)`` loads the latest and saves a new timestamp.
            credentials, fs_args: passed to ``fsspec.filesystem``.
            metadata: ignored by Kedro.
        """
        load_args = {**self.DEFAULT_LOAD_ARGS, **(load_args or {})}
        unknown = set(load_args) - set(self.DEFAULT_LOAD_ARGS)
        if unknown:
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
        """Versions saved under ``filepath`` that hold a complete adapter, newest first (Kedro's timestamps
        sort in time order); empty for an unversioned entry or when nothing was saved."""
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
