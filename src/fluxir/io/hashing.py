"""SHA-256 of files, state dicts and JSON values: the keys that say two inputs or outputs are the same."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any


def sha256_file(path: str | os.PathLike, fs: Any = None) -> str:
    """Hex SHA-256 of a file's bytes (on the fsspec filesystem ``fs``, the local one by default)."""
    digest = hashlib.sha256()
    with fs.open(str(path), "rb") if fs is not None else open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hash_tensors(tensors: Mapping[str, Any], digest: Any = None) -> Any:
    """Feed every tensor of ``tensors`` (a state dict) into ``digest`` (a new sha256 by default); returns it.

    Each entry contributes ``name:dtype:shape`` and its raw bytes, in sorted name order, so two models
    hash alike only when names, dtypes, shapes and every bit of every value agree.
    """
    import torch

    digest = digest or hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest


def hash_json(obj: Any, length: int = 12) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``json.dumps(obj, sort_keys=True, default=str)``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]
