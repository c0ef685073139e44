"""Two image readers on purpose: ``read_image`` reads data (generated images, pairs, benchmark crops) exactly as
stored, since an HQ and its LQ must stay aligned whatever their EXIF tags say; ``read_photo`` reads a user's photo as a
viewer shows it. Both decode fully at once (a truncated file fails here) and raise ValueError starting with the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError


def check_rgb_uint8(image: Any, hint: str) -> np.ndarray:
    """``image`` if it is an (H, W, 3) uint8 array with H, W >= 1, else ValueError saying what it is and ``hint``."""
    shape = getattr(image, "shape", ())
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or len(shape) != 3 or shape[2] != 3 or 0 in shape:
        array = isinstance(image, np.ndarray)
        desc = f"{image.dtype} {shape}" if array else f"{type(image).__name__}, not a numpy array"
        raise ValueError(f"expected an RGB uint8 image of shape (H, W, 3), got {desc}; {hint}")
    return image


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
    """A photo file of any size and mode -> (RGB (H, W, 3) uint8, alpha (H, W) uint8 or None): EXIF orientation
    applied, 16-bit greyscale scaled to 8 bits (v / 257), an alpha channel returned apart to be carried over."""
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
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(img).astype(np.float64)  # 16-bit greyscale, 32-bit int or float samples
        if mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0  # floats in [0, 1] (else already 0..255)
        elif mode != "F" and (mode != "I" or a.max(initial=0) > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        grey = np.clip(np.round(a), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2), None
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        return np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3])
    return np.asarray(img.convert("RGB")), None
