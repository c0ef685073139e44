"""Where stage outputs go: the sharded image store (350,000 images do not belong in one folder), the
``WriterPool`` that writes off the generating loop's critical path, and the lock that allows one writer per output."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from fluxir.io.atomic import fsync_dir, write_atomic, write_png_atomic
from fluxir.io.images import read_image
from fluxir.io.provenance import sha256_file

logger = logging.getLogger(__name__)

SHARD_SIZE = 1000
LOCK_NAME = ".lock"  # the writer lock of a stage's output folder (exclusive_lock)


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
    """A folder of PNG images keyed by integer id: image ``i`` lives at ``<root>/<i // 1000:04d>/<i:08d>.png``, the
    SHA-256 of every written one next to it (``fluxir.fluxgen.manifest`` explains why and reads it back)."""

    root: Path

    def path_for(self, image_id: int) -> Path:
        return self.root / f"{image_id // SHARD_SIZE:04d}" / f"{image_id:08d}.png"

    def exists(self, image_id: int) -> bool:  # writes are atomic: an image that exists is complete
        return self.path_for(image_id).is_file()

    def write(self, image_id: int, image: np.ndarray, fsync_folder: bool = True, pnginfo: Any = None) -> Path:
        """A writer of many images passes ``fsync_folder=False`` and calls ``sync_shards`` once per batch."""
        path = self.path_for(image_id)
        write_png_atomic(path, image, pnginfo, fsync_folder=fsync_folder)
        return path

    def write_recorded(
        self, image_id: int, image: np.ndarray, fsync_folder: bool = True, pnginfo: Any = None
    ) -> Recorded:
        """``write`` plus :func:`record_hash`: the way every FluxGen image and pair is written."""
        return record_hash(self.write(image_id, image, fsync_folder=fsync_folder, pnginfo=pnginfo))

    def sync_shards(self, image_ids: Iterable[int]) -> None:
        """Flush the shard folders of ``image_ids`` (the renames of images written with ``fsync_folder=False``)."""
        for shard in sorted({image_id // SHARD_SIZE for image_id in image_ids}):
            fsync_dir(self.root / f"{shard:04d}")

    def read(self, image_id: int) -> np.ndarray:
        return read_image(self.path_for(image_id))

    def sub(self, name: str) -> ImageStore:  # one per generation / degradation configuration
        return ImageStore(self.root / name)


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory (the Kedro project root) when inside it, so manifests
    stay valid when the project folder moves; absolute otherwise."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class WriterPool:
    """Runs file writes on ``threads`` threads behind a bounded queue, so the caller never waits on files. PNG's zlib
    and hashlib release the GIL, so threads overlap encoding with the caller's compute. At most ``2 x threads`` jobs
    wait (each holds one image): a slow disk slows the producer instead of filling RAM. The first error of any job is
    raised in the calling thread (next ``submit`` or ``close``). ``threads=0`` runs each job inside ``submit``.
    ``waited_s``: how long the caller was held up (near 0 when the writes keep up)."""

    def __init__(self, threads: int) -> None:
        from concurrent.futures import ThreadPoolExecutor
        from threading import BoundedSemaphore

        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="fluxir-writer") if threads > 0 else None
        self._slots = BoundedSemaphore(2 * max(threads, 1))
        self._futures: list[Any] = []
        self.waited_s = 0.0

    def submit(self, fn: Any, *args: Any) -> None:
        """Queue ``fn(*args)``; blocks while the queue is full; raises the error of an earlier failed job."""
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


class FolderBusy(RuntimeError):
    """Another process holds the lock of an output that cannot be shared or waited for."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the block: a second run of the same stage waits here, logging
    which process holds it, and then finds the first one's work done. With ``wait=False`` (a training run: waiting would
    be for days) it raises ``FolderBusy`` naming the holder. ``fcntl.flock``: released by the kernel when the holder
    ends in any way (a kill -9 leaves no stale lock); works on local disks and NFSv4. Where ``fcntl`` does not exist
    (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise FolderBusy(
                    f"{what} is being written by {holder} (lock {path}): let that run finish or stop it, "
                    "or give this one another folder"
                ) from None
            logger.warning("%s is being written by %s; waiting for it to finish (lock %s)", what, holder, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
        yield
    finally:
        os.close(fd)
