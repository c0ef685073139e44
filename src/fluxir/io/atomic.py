"""Atomic, durable writes: a file or folder that exists under its final name is complete, after a kill and after
a power loss alike (written next to its target, flushed with ``fsync``, renamed into place)."""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
from PIL import Image

from fluxir.io.provenance import sha256_file


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder's entries (the renames into it) to the disk. No-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except (PermissionError, IsADirectoryError):
        return
    with contextlib.suppress(OSError):  # some filesystems refuse fsync on folders; the file data is flushed already
        os.fsync(fd)
    os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, *, fsync: bool = True, fsync_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (unique per process and call, so concurrent writers never mix bytes);
    when the block succeeds it is renamed onto ``path``, on error ``path`` is left as it was. Many files into one folder
    (a shard of PNGs) pass ``fsync_folder=False`` and call ``fsync_dir(folder)`` once for the batch; ``fsync=False``
    only for caches that are rebuilt when lost or cut (hash sidecars)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, path)
        if fsync and fsync_folder:
            fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str, **durability: bool) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically (``durability``: see ``atomic_file``)."""
    with atomic_file(path, **durability) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    return write_atomic(path, json.dumps(obj, **dumps_kwargs))


def write_png_atomic(path: str | os.PathLike, image: np.ndarray, pnginfo: Any = None, **durability: bool) -> None:
    """Write ``image`` (H, W, 3 or 4) uint8 as PNG at ``path`` atomically, with the text chunks ``pnginfo``."""
    with atomic_file(path, **durability) as tmp:
        Image.fromarray(image).save(tmp, format="PNG", pnginfo=pnginfo)


def local_fs() -> Any:
    """The local fsspec filesystem, creating parent folders on write (the default of every ``fs=`` here)."""
    return fsspec.filesystem("file", auto_mkdir=True)


def _is_local(fs: Any) -> bool:
    protocol = getattr(fs, "protocol", None)
    return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))


@contextmanager
def atomic_directory(folder: str | os.PathLike, fs: Any = None) -> Iterator[str]:
    """Yield a temporary folder next to ``folder`` (a path of the fsspec filesystem ``fs``); when the block
    succeeds it replaces ``folder``. The old folder is moved aside first, then deleted, so a crash at any point
    leaves either the old or the new folder under the final name."""
    fs = fs or local_fs()
    folder = str(folder).rstrip("/")
    parent, name = posixpath.split(folder)
    tmp = posixpath.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    fs.makedirs(tmp, exist_ok=True)
    try:
        yield tmp
        if _is_local(fs):
            for root, _, files in os.walk(tmp, topdown=False):
                for name in files:
                    fsync_file(os.path.join(root, name))
                fsync_dir(root)
        old = None
        if fs.exists(folder):
            old = posixpath.join(parent, f".old-{name}-{uuid.uuid4().hex[:8]}")
            fs.mv(folder, old, recursive=True)
        fs.mv(tmp, folder, recursive=True)
        if _is_local(fs):
            fsync_dir(parent or ".")
        if old is not None:
            fs.rm(old, recursive=True)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)


# Folder manifests: a rename makes a folder appear at once, but storage can still lose or cut its files (power
# loss, bit rot, a copy that stopped); the manifest, written last, records every file's size and SHA-256.

MANIFEST_NAME = "manifest.json"


def write_manifest(folder: str | os.PathLike, fs: Any = None) -> dict[str, dict[str, Any]]:
    """Write ``<folder>/manifest.json``: ``{relative path: {size, sha256}}`` of every other file; returns it."""
    fs = fs or local_fs()
    root = str(folder).rstrip("/")
    names = sorted(posixpath.relpath(p, root) for p in fs.find(root))
    entries = {
        name: {"size": fs.size(f"{root}/{name}"), "sha256": sha256_file(f"{root}/{name}", fs)}
        for name in names
        if name != MANIFEST_NAME
    }
    with fs.open(f"{root}/{MANIFEST_NAME}", "w") as fh:
        fh.write(json.dumps({"files": entries}, indent=1, sort_keys=True))
    return entries


def manifest_problem(folder: str | os.PathLike, fs: Any = None) -> str | None:
    """None when ``<folder>/manifest.json`` exists and every file it lists has its size and SHA-256; else
    what is wrong, naming the file (``<folder>/<file>: 1024 bytes, the manifest says 4096``)."""
    fs = fs or local_fs()
    root = str(folder).rstrip("/")
    manifest = f"{root}/{MANIFEST_NAME}"
    if not fs.exists(manifest):
        return f"{manifest} is missing (the folder was cut off while being written)"
    try:
        with fs.open(manifest, "r") as fh:
            entries = json.loads(fh.read())["files"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{manifest} is not a readable manifest ({err})"
    for name, entry in sorted(entries.items()):
        path = f"{root}/{name}"
        if not fs.exists(path):
            return f"{path} is missing"
        size = fs.size(path)
        if size != entry["size"]:
            return f"{path}: {size} bytes, the manifest says {entry['size']}"
        if sha256_file(path, fs) != entry["sha256"]:
            return f"{path}: its SHA-256 differs from the manifest's (the file is corrupt)"
    return None
