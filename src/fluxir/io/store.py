"""The image store: 350,000 images do not belong in one folder.

Image ``i`` of an ``ImageStore`` lives at ``<root>/<i // 1000:04d>/<i:08d>.png``; the SHA-256 of every
written image is recorded next to it (``fluxir.fluxgen.generate`` explains why and reads it back). A
``WriterPool`` runs the writes on threads, off the generating loop's critical path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from fluxir.io.atomic import fsync_dir, write_atomic, write_png_atomic
from fluxir.io.hashing import sha256_file
from fluxir.io.images import read_image

SHARD_SIZE = 1000


@dataclass(frozen=True)
class Recorded:
    """What was recorded about one image file; valid while ``size`` and ``mtime_ns`` still match."""

    sha256: str
    size: int
    mtime_ns: int

    def matches(self, stat: os.stat_result) -> bool:
        return stat.st_size == self.size and stat.st_mtime_ns == self.mtime_ns


def sidecar_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.sha256")


def record_hash(path: Path) -> Recorded:
    """Hash ``path`` (just written, so read from the page cache) and keep the result in its sidecar."""
    stat = path.stat()
    recorded = Recorded(sha256_file(path), stat.st_size, stat.st_mtime_ns)
    # a cache: a sidecar lost or cut by a power loss is unreadable or stale and the image is hashed again
    write_atomic(sidecar_path(path), json.dumps([recorded.sha256, recorded.size, recorded.mtime_ns]), fsync=False)
    return recorded


@dataclass(frozen=True)
class ImageStore:
    """A folder of sharded PNG images keyed by integer id."""

    root: Path

    def path_for(self, image_id: int) -> Path:
        """Where image ``image_id`` lives (whether or not it exists yet)."""
        return self.root / f"{image_id // SHARD_SIZE:04d}" / f"{image_id:08d}.png"

    def exists(self, image_id: int) -> bool:
        """True when the image was completely written (writes are atomic)."""
        return self.path_for(image_id).is_file()

    def write(self, image_id: int, image: np.ndarray, fsync_folder: bool = True, pnginfo: Any = None) -> Path:
        """Atomically and durably write image ``image_id`` with the text chunks ``pnginfo``; returns its path.

        A writer of many images passes ``fsync_folder=False`` and calls ``sync_shards`` once per batch.
        """
        path = self.path_for(image_id)
        write_png_atomic(path, image, pnginfo, fsync_folder=fsync_folder)
        return path

    def write_recorded(
        self, image_id: int, image: np.ndarray, fsync_folder: bool = True, pnginfo: Any = None
    ) -> Recorded:
        """``write`` plus :func:`record_hash`: the way every FluxGen image and pair is written (``pnginfo``: its
        provenance, ``fluxir.io.provenance``).

        ``fsync_folder=False``: the caller flushes the shard folders afterwards (``sync_shards``).
        """
        return record_hash(self.write(image_id, image, fsync_folder=fsync_folder, pnginfo=pnginfo))

    def sync_shards(self, image_ids: Iterable[int]) -> None:
        """Flush the shard folders of ``image_ids`` (the renames of images written with ``fsync_folder=False``)."""
        for shard in sorted({image_id // SHARD_SIZE for image_id in image_ids}):
            fsync_dir(self.root / f"{shard:04d}")

    def read(self, image_id: int) -> np.ndarray:
        """Image ``image_id`` as RGB uint8."""
        return read_image(self.path_for(image_id))

    def sub(self, name: str) -> ImageStore:
        """A store in a sub-folder (one per generation / degradation configuration)."""
        return ImageStore(self.root / name)


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory (the Kedro project root) when inside it, so manifests
    stay valid when the project folder moves; absolute otherwise."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------------
# Writes off the critical path


class WriterPool:
    """Runs file writes on ``threads`` threads behind a bounded queue, so the caller never waits on files.

    PNG's zlib and hashlib release the GIL, so threads overlap encoding with the caller's compute (a
    denoising loop). At most ``2 x threads`` jobs wait (each holds one image), so memory stays bounded and
    a slow disk slows the producer down instead of filling RAM. The first error of any job is raised in
    the calling thread (at the next ``submit`` or at ``close``), never lost. ``close`` (the end of the
    ``with`` block) waits until every job has finished. ``threads=0`` runs each job inside ``submit``.
    ``waited_s``: how long the caller was held up (waiting for a free slot, at ``close``, or running jobs
    itself with ``threads=0``): near 0 when the writes keep up.
    """

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor
        from threading import BoundedSemaphore

        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="fluxir-writer") if threads > 0 else None
        self._slots = BoundedSemaphore(2 * max(threads, 1))
        self._futures: list[Any] = []
        self.waited_s = 0.0

    def submit(self, fn: Any, *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while the queue is full; raises the error of an earlier failed job."""
        import time

        self._raise_first_error()
        start = time.perf_counter()
        if self._executor is None:
            fn(*args)
            self.waited_s += time.perf_counter() - start
            return
        self._slots.acquire()
        self.waited_s += time.perf_counter() - start
        future = self._executor.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _raise_first_error(self) -> None:
        done = [f for f in self._futures if f.done()]
        self._futures = [f for f in self._futures if not f.done()]
        for future in done:
            future.result()  # re-raises the job's exception here, in the caller's thread

    def close(self) -> None:
        """Wait for every queued job; raise the first error among them."""
        import time

        start = time.perf_counter()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self.waited_s += time.perf_counter() - start
        futures, self._futures = self._futures, []
        for future in futures:
            future.result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is None:
            self.close()
        elif self._executor is not None:  # already failing: let queued writes finish, keep the first error
            self._executor.shutdown(wait=True)
