"""Files: atomic writes, image readers, hashing, and the sharded image store.

Every write goes to a temporary file (or folder) next to its target and is renamed into place, so a
file that exists is complete: a killed run loses at most what was in flight and a rerun skips the rest.

350,000 images do not belong in one folder: image ``i`` of an ``ImageStore`` lives at
``<root>/<i // 1000:04d>/<i:08d>.png``.

This module is imported by the catalog's datasets (``kedro viz`` start-up): torch is imported only
inside ``hash_tensors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import fsspec
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SHARD_SIZE = 1000

# ----------------------------------------------------------------------------------------------------
# Atomic writes


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; when the block succeeds it is renamed onto ``path``.

    The temporary name is unique per process and call (``.<name>.<pid>.<random>.tmp``), so concurrent
    writers of the same file never mix bytes; on error it is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(obj, **dumps_kwargs)`` to ``path`` atomically; returns the path."""
    return write_atomic(path, json.dumps(obj, **dumps_kwargs))


def write_png_atomic(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write ``image`` (H, W, 3 or 4) uint8 as PNG at ``path`` atomically."""
    with atomic_file(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def local_fs() -> Any:
    """The local fsspec filesystem, creating parent folders on write (the default of every ``fs=`` here)."""
    return fsspec.filesystem("file", auto_mkdir=True)


@contextmanager
def atomic_directory(folder: str | os.PathLike, fs: Any = None) -> Iterator[str]:
    """Yield a temporary folder ``<parent>/.tmp-<name>-<random>``; when the block succeeds it replaces ``folder``.

    An existing ``folder`` stays complete until the new one is moved in (it is first moved aside, then
    deleted), so a crash at any point leaves either the old or the new folder under the final name.
    ``fs`` is an fsspec filesystem (the local one by default); the yielded path is in its syntax.
    """
    fs = fs or local_fs()
    folder = str(folder).rstrip("/")
    parent, name = posixpath.split(folder)
    tmp = posixpath.join(parent, f".tmp-{name}-{uuid.uuid4().hex[:8]}")
    fs.makedirs(tmp, exist_ok=True)
    try:
        yield tmp
        old = None
        if fs.exists(folder):
            old = posixpath.join(parent, f".old-{name}-{uuid.uuid4().hex[:8]}")
            fs.mv(folder, old, recursive=True)
        fs.mv(tmp, folder, recursive=True)
        if old is not None:
            fs.rm(old, recursive=True)
    finally:
        if fs.exists(tmp):
            fs.rm(tmp, recursive=True)


# ----------------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
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
    write_atomic(sidecar_path(path), json.dumps([recorded.sha256, recorded.size, recorded.mtime_ns]))
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

    def write(self, image_id: int, image: np.ndarray) -> Path:
        """Atomically write image ``image_id``; returns its path."""
        path = self.path_for(image_id)
        write_png_atomic(path, image)
        return path

    def write_recorded(self, image_id: int, image: np.ndarray) -> Recorded:
        """``write`` plus :func:`record_hash`: the way every FluxGen image and pair is written."""
        return record_hash(self.write(image_id, image))

    def read(self, image_id: int) -> np.ndarray:
        """Image ``image_id`` as RGB uint8."""
        return read_image(self.path_for(image_id))

    def sub(self, name: str) -> "ImageStore":
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
