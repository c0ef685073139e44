"""Images as files: sharded folders, atomic writes, checked reads.

350,000 images do not belong in one folder: image ``i`` lives at ``<root>/<i // 1000:04d>/<i:08d>.png``.
Every write goes to a temporary file in the same folder and is renamed into place, so a file that
exists is complete: a killed run loses at most the images in flight and a rerun skips the rest.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

SHARD_SIZE = 1000


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 ``(H, W, 3)`` array; a corrupt, truncated or non-image file raises ValueError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()  # decodes fully, so truncation is caught here, not later
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"{path}: not a readable image ({err}); delete or replace the file and rerun") from err


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the working directory (the Kedro project root) when inside it, so manifests
    stay valid when the project folder moves; absolute otherwise."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_png_atomic(path: Path, image: np.ndarray) -> None:
    """Write ``image`` (H, W, 3) uint8 as PNG at ``path`` via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(image).save(tmp, format="PNG")
    os.replace(tmp, path)


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

    def read(self, image_id: int) -> np.ndarray:
        """Image ``image_id`` as RGB uint8."""
        return read_image(self.path_for(image_id))

    def sub(self, name: str) -> "ImageStore":
        """A store in a sub-folder (one per generation / degradation configuration)."""
        return ImageStore(self.root / name)
