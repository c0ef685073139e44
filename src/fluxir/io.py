"""Files: atomic writes, image readers, hashing, and the sharded image store.

Every write goes to a temporary file (or folder) next to its target, is flushed to the disk (``fsync``) and
renamed into place, so a file that exists is complete, after a kill and after a power loss alike: a
stopped run loses at most what was in flight and a rerun skips the rest.

350,000 images do not belong in one folder: image ``i`` of an ``ImageStore`` lives at
``<root>/<i // 1000:04d>/<i:08d>.png``.

This module is imported by the catalog's datasets (``kedro viz`` start-up): torch is imported only
inside ``hash_tensors``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

SHARD_SIZE = 1000
LOCK_NAME = ".lock"  # the writer lock of a stage's output folder (exclusive_lock)

# ----------------------------------------------------------------------------------------------------
# Atomic writes


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written file's data to the disk (``fsync``), so a later rename never names an empty file."""
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
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the file data is flushed already
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_file(path: str | os.PathLike, *, fsync: bool = True, fsync_folder: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is renamed onto ``path``.

    The temporary name is unique per process and call (``.<name>.<pid>.<random>.tmp``), so concurrent
    writers of the same file never mix bytes; on error it is removed and ``path`` is left as it was.
    Durable by default: the file is flushed before the rename (after a power loss a file that exists is
    complete) and the folder after it (the file is there). Many files into one folder (a shard of PNGs)
    pass ``fsync_folder=False`` and call ``fsync_dir(folder)`` once for the batch; ``fsync=False`` only
    for caches that are rebuilt when lost or cut (hash sidecars).
    """
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
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically and durably; returns the path."""
    return write_atomic(path, json.dumps(obj, **dumps_kwargs))


def write_png_atomic(path: str | os.PathLike, image: np.ndarray, **durability: bool) -> None:
    """Write ``image`` (H, W, 3 or 4) uint8 as PNG at ``path`` atomically (``durability``: see ``atomic_file``)."""
    with atomic_file(path, **durability) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def local_fs() -> Any:
    """The local fsspec filesystem, creating parent folders on write (the default of every ``fs=`` here)."""
    return fsspec.filesystem("file", auto_mkdir=True)


def _is_local(fs: Any) -> bool:
    protocol = getattr(fs, "protocol", None)
    return "file" in (protocol if isinstance(protocol, (tuple, list)) else (protocol,))


def fsync_tree(folder: str | os.PathLike) -> None:
    """Flush every file and folder below a local ``folder`` (deepest first), then ``folder`` itself."""
    for root, _, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_file(os.path.join(root, name))
        fsync_dir(root)


@contextmanager
def atomic_directory(folder: str | os.PathLike, fs: Any = None) -> Iterator[str]:
    """Yield a temporary folder ``<parent>/.tmp-<name>-<random>``; when the block succeeds it replaces ``folder``.

    An existing ``folder`` stays complete until the new one is moved in (it is first moved aside, then
    deleted), so a crash at any point leaves either the old or the new folder under the final name.
    On the local filesystem every file is flushed before the move and the parent folder after it.
    ``fs`` is an fsspec filesystem (the local one by default); the yielded path is in its syntax.
    """
    fs = fs or local_fs()
    folder = str(folder).rstrip("/")
    parent, name = posixpath.split(folder)
    tmp = posixpath.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    fs.makedirs(tmp, exist_ok=True)
    try:
        yield tmp
        if _is_local(fs):
            fsync_tree(tmp)
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


# ----------------------------------------------------------------------------------------------------
# Locks: one writer per stage output


class FolderBusy(RuntimeError):
    """Another process holds the lock of an output that cannot be shared or waited for."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the block: a second run of the same
    stage waits here, logging which process holds it, and then finds the first one's work done. With
    ``wait=False`` (a training run: waiting would be for days) it raises ``FolderBusy`` naming the holder.

    ``fcntl.flock``: released by the kernel when the holder ends in any way (a kill -9 leaves no stale lock);
    works on local disks and NFSv4. Where ``fcntl`` does not exist (Windows) the block runs unlocked.
    """
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


# ----------------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike, fs: Any = None) -> str:
    """Hex SHA-256 of a file's bytes (on the fsspec filesystem ``fs``, the local one by default)."""
    digest = hashlib.sha256()
    with fs.open(str(path), "rb") if fs is not None else open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------
# Folder manifests: a folder that proves itself
#
# A rename makes a folder appear at once, but storage can still lose or cut its files (power loss before
# the data reached the disk, bit rot, a copy that stopped). ``write_manifest`` records every file's size
# and SHA-256 as the folder's last file; ``manifest_problem`` says what no longer matches.

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
        return f"{manifest} is missing (the folder was cut off while being written, or predates manifests)"
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


# ----------------------------------------------------------------------------------------------------
# Reading images
#
# Two readers on purpose. ``read_image`` reads the files this project writes or downloads as data
# (generated images, HQ/LQ pairs, benchmark crops): pixels exactly as stored, no EXIF rotation, since
# an HQ and its LQ must stay aligned whatever their tags say. ``read_photo`` reads a user's photo for
# restoration: EXIF rotation applied as a viewer shows it, 16-bit and float greyscale scaled to 8 bits,
# alpha kept apart so it can be carried over. Both decode fully at once (a truncated file fails here,
# not later) and raise ValueError starting with the path.


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file from its header, without decoding the pixels."""
    with Image.open(path) as img:
        return img.size


def read_image(path: str | os.PathLike) -> np.ndarray:
    """A data image file as stored -> RGB uint8 ``(H, W, 3)``; a corrupt or non-image file raises ValueError."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully, so truncation is caught here, not later
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({err}); delete or replace the file and rerun") from err


def read_photo(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """A photo file of any size and mode -> (RGB (H, W, 3) uint8, alpha (H, W) uint8 or None).

    EXIF orientation is applied (``ImageOps.exif_transpose``); 16-bit greyscale is scaled to 8 bits
    (v / 257, so 65535 -> 255); palette/greyscale/CMYK/... become RGB; an alpha channel (RGBA, LA,
    palette transparency) is returned separately. An empty, corrupt, truncated or non-image file raises
    ValueError starting with the path and saying why.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now: truncation is caught here
            img = ImageOps.exif_transpose(img)
            return _to_rgb_alpha(img)
    except UnidentifiedImageError as err:
        raise ValueError(f"{path}: not an image file PIL can read ({err})") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: corrupt or truncated image ({err})") from err


def _to_rgb_alpha(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img).astype(np.float64)  # 16-bit greyscale (or 32-bit int) samples
        if mode != "I" or a.max(initial=0) > 255:
            a = a / 257.0  # 0..65535 -> 0..255
        grey = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if a.max(initial=0) <= 1.0 else a  # floats in [0, 1] or already 0..255
        grey = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    has_alpha = mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    return np.asarray(img.convert("RGB")), None


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory (the Kedro project root) when inside it, so manifests
    stay valid when the project folder moves; absolute otherwise."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------------
# Image store


# The SHA-256 of a written image is recorded next to it (fluxir.fluxgen.manifest explains why and reads it back).


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

    def write(self, image_id: int, image: np.ndarray, fsync_folder: bool = True) -> Path:
        """Atomically and durably write image ``image_id``; returns its path.

        A writer of many images passes ``fsync_folder=False`` and calls ``sync_shards`` once per batch.
        """
        path = self.path_for(image_id)
        write_png_atomic(path, image, fsync_folder=fsync_folder)
        return path

    def write_recorded(self, image_id: int, image: np.ndarray, fsync_folder: bool = True) -> Recorded:
        """``write`` plus :func:`record_hash`: the way every FluxGen image and pair is written.

        ``fsync_folder=False``: the caller flushes the shard folders afterwards (``sync_shards``).
        """
        return record_hash(self.write(image_id, image, fsync_folder=fsync_folder))

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
