"""Folder manifests: a folder that proves itself.

A rename makes a folder appear at once, but storage can still lose or cut its files (power loss before
the data reached the disk, bit rot, a copy that stopped). ``write_manifest`` records every file's size
and SHA-256 as the folder's last file; ``manifest_problem`` says what no longer matches.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from fluxir.io.atomic import local_fs
from fluxir.io.hashing import sha256_file

MANIFEST_NAME = "manifest.json"


def _files_under(folder: str, fs: Any) -> list[str]:
    """Paths (relative, POSIX) of every file below ``folder`` except the manifest, sorted."""
    root = folder.rstrip("/")
    names = [posixpath.relpath(p, root) for p in fs.find(root)]
    return sorted(n for n in names if n != MANIFEST_NAME)


def write_manifest(folder: str | os.PathLike, fs: Any = None) -> dict[str, dict[str, Any]]:
    """Write ``<folder>/manifest.json``: ``{relative path: {size, sha256}}`` of every other file; returns it.

    Call it last, on the finished (usually still temporary) folder.
    """
    fs = fs or local_fs()
    root = str(folder).rstrip("/")
    entries = {
        name: {"size": fs.size(f"{root}/{name}"), "sha256": sha256_file(f"{root}/{name}", fs)}
        for name in _files_under(root, fs)
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
