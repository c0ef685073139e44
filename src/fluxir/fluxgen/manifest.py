"""Manifests of FluxGen images: the SHA-256 of every image is recorded when it is written, never re-read.

350,000 FluxGen images are about 0.5 TB: hashing them on every run would take longer than the run.
So the hash of an image is computed once, right after it is written (from the page cache), and kept
in a small sidecar ``.<id>.png.sha256`` next to it, together with the file's size and ``mtime_ns``.
Building a manifest merges the sidecars of a shard folder (1,000 images) into one per-shard index
``<shard>/.sha256-index.json`` and from then on only ``stat``s the images: a recorded hash is trusted
while the file's size and mtime_ns are unchanged, and a changed or unrecorded file is hashed again.

Every file here is written to a temporary name and renamed, so a killed run never leaves a half
written index or sidecar under its final name. Several processes may write images (and sidecars)
into one shard at once; the per-shard index is only written by the process building the manifest.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path

import numpy as np
import pandas as pd

from fluxir.fluxgen.generate import GenerationConfig, prompt_for
from fluxir.io.atomic import fsync_dir, write_atomic
from fluxir.io.store import SHARD_SIZE, ImageStore, Recorded, portable_path, record_hash, sidecar_path

INDEX_NAME = ".sha256-index.json"


def _read_sidecar(path: Path) -> Recorded | None:
    try:
        sha, size, mtime_ns = json.loads(path.read_text())
        return Recorded(sha, size, mtime_ns)
    except (OSError, ValueError, TypeError):
        return None  # missing or unreadable sidecar: the image is hashed again


def _read_index(shard: Path) -> dict[str, Recorded]:
    try:
        raw = json.loads((shard / INDEX_NAME).read_text())
        return {name: Recorded(*values) for name, values in raw.items()}
    except (OSError, ValueError, TypeError):
        return {}  # no index yet, or a damaged one (rebuilt from sidecars / hashes below)


def recorded_hashes(store: ImageStore, image_ids: Iterable[int]) -> Iterator[tuple[int, Path, str, int]]:
    """``(image_id, path, sha256, size)`` for each id (ascending ids are fastest), without reading images
    whose recorded hash is still valid. A missing image raises FileNotFoundError naming it."""
    for _, ids in groupby(image_ids, key=lambda i: i // SHARD_SIZE):
        ids = list(ids)
        shard = store.path_for(ids[0]).parent
        index = _read_index(shard)
        try:
            listing = {entry.name: entry for entry in os.scandir(shard)}
        except FileNotFoundError:
            listing = {}
        changed = False
        for image_id in ids:
            path = store.path_for(image_id)
            entry = listing.get(path.name)
            if entry is None:
                raise FileNotFoundError(
                    f"image {image_id} is missing: no file {path}; run the generation again (it makes only missing ids)"
                )
            stat = entry.stat()
            recorded = index.get(path.name)
            if recorded is None or not recorded.matches(stat):
                sidecar = sidecar_path(path)
                recorded = _read_sidecar(sidecar) if sidecar.name in listing else None
                if recorded is None or not recorded.matches(stat):
                    recorded = record_hash(path)  # new, replaced or touched since: hash it once more
                index[path.name] = recorded
                changed = True
            yield image_id, path, recorded.sha256, recorded.size
        if changed:
            payload = {name: [r.sha256, r.size, r.mtime_ns] for name, r in sorted(index.items())}
            fsync_dir(shard)  # the images the index lists are on the disk before the index is
            write_atomic(shard / INDEX_NAME, json.dumps(payload))


def generation_manifest(cfg: GenerationConfig, store: ImageStore) -> pd.DataFrame:
    """One row per image id of ``cfg`` (all must exist in ``store``), typed columns, hashes from the index.

    Columns: image_id, seed, prompt, path, sha256, width, height, model, config_key (int64/int32/str).
    """
    ids = np.arange(cfg.num_images, dtype=np.int64)
    root = portable_path(store.root)  # resolved once: resolving 350,000 paths would cost more than the scan
    paths, hashes = [], []
    for _, path, sha, _ in recorded_hashes(store, range(cfg.num_images)):
        paths.append(f"{root}/{path.parent.name}/{path.name}")
        hashes.append(sha)
    return pd.DataFrame(
        {
            "image_id": ids,
            "seed": cfg.base_seed + ids,  # image_seed(base_seed, i), vectorised
            "prompt": [prompt_for(i, cfg.prompts) for i in range(cfg.num_images)],
            "path": paths,
            "sha256": hashes,
            "width": np.full(len(ids), cfg.width, dtype=np.int32),
            "height": np.full(len(ids), cfg.height, dtype=np.int32),
            "model": cfg.model,
            "config_key": cfg.key(),
        }
    )
