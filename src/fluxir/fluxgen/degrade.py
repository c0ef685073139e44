"""The "degrade" step of FluxGen: Real-ESRGAN second-order degradation with SeeSR's training settings.

Paper Sec. 3.1: "we apply the synthetic degradation method [Real-ESRGAN] with the same settings as
[SeeSR] to construct paired data"; Sec. 4.1: images (generated at 1024x768) are "randomly
center-crop[ped] to the sizes of 1024x768, 768x768 and 512x768".

The story of one pair, as SeeSR's ``utils_data/make_paired_data.py`` does it (it feeds basicsr's
``RealESRGANDataset`` into a copy of Real-ESRGAN's ``feed_data``):

1. crop: pick a size from ``crop_sizes`` that fits, centred (paper) or at a random place;
2. random horizontal flip (SeeSR ``use_hflip=True``);
3. USM-sharpen the crop. SeeSR saves this sharpened image as its GT and degrades it, so the HQ we
   return is the sharpened crop (``use_usm=False`` returns the plain crop);
4. draw three kernels like ``RealESRGANDataset.__getitem__``: order-1 and order-2 blur (sinc with
   ``sinc_prob``, otherwise one of six Gaussian-like types) and the final sinc (``final_sinc_prob``);
5. order 1: blur -> random resize -> Gaussian or Poisson noise -> JPEG;
6. order 2: blur (``second_blur_prob``) -> random resize -> noise -> either [resize to 1/scale + sinc,
   then JPEG] or [JPEG, then resize + sinc], 50/50;
7. round to uint8: HQ is H x W, LQ is exactly H/scale x W/scale.

Every random step uses basicsr's own functions, which draw from the *global* Python / numpy / torch
generators: each pair seeds all three from a SHA-256 of (image id, seed) and restores them afterwards, so the
same id and seed give byte-identical HQ/LQ in any order. Pairs are degraded one at a time on purpose: Real-ESRGAN's
batched path shares one resize scale and one noise tensor across the batch (an LQ would depend on its batch mates).
USM (basicsr's numpy ``usm_sharp``, ~100x faster) and the blurs (OpenCV's ``filter2D``, 5-25x faster) compute what
Real-ESRGAN computes to ~1e-6, on the CPU, so results do not depend on a GPU's kernels. Sizes are (width, height);
arrays are (H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from fluxir.compat import import_basicsr
from fluxir.fluxgen.degrade_config import DegradationConfig
from fluxir.io.images import check_rgb_uint8
from fluxir.parameters.config import is_int

import_basicsr()  # must precede every basicsr import (torchvision removed functional_tensor)

from basicsr.data.degradations import (  # noqa: E402
    add_gaussian_noise_pt,
    add_poisson_noise_pt,
    circular_lowpass_kernel,
    random_mixed_kernels,
)
from basicsr.utils import DiffJPEG  # noqa: E402
from basicsr.utils.img_process_util import usm_sharp  # noqa: E402

RESIZE_MODES = ("area", "bilinear", "bicubic")  # Real-ESRGAN picks one uniformly for every resize


# Crops


def choose_crop(
    width: int, height: int, crop_sizes: Sequence[tuple[int, int]], rng: random.Random, position: str = "center"
) -> tuple[int, int, int, int]:
    """Pick (left, top, w, h): a uniformly chosen size among those that fit, centred or at a random place."""
    fitting = [(w, h) for w, h in crop_sizes if w <= width and h <= height]
    if not fitting:
        raise ValueError(
            f"image of (width, height)={(width, height)} is smaller than every crop size {list(crop_sizes)} "
            "(degrade.config.crop_sizes, [width, height] pairs); add a size that fits, e.g. "
            f"--params 'degrade.config.crop_sizes=[[{width - width % 4},{height - height % 4}]]', or use larger images"
        )
    w, h = rng.choice(fitting)
    if position == "center":  # else "random" (DegradationConfig.crop_position allows no other)
        return (width - w) // 2, (height - h) // 2, w, h
    return rng.randint(0, width - w), rng.randint(0, height - h), w, h


# Per-pair seeding

# basicsr draws from the process-wide generators; the lock keeps two threads from interleaving.
_RNG_LOCK = threading.Lock()


def pair_seed(image_id: int | str, seed: int) -> int:
    """A 64-bit seed from (id, seed), stable across processes (Python's ``hash`` is salted); 7 and "7" are alike."""
    if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
        raise ValueError(f"image_id must be an int or str, got {image_id!r} ({type(image_id).__name__})")
    if not is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r} ({type(seed).__name__})")
    digest = hashlib.sha256(f"fluxir.degrade\0{image_id}\0{int(seed)}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@contextmanager
def _seeded_global_rngs(seed64: int) -> Iterator[None]:
    """Seed Python, numpy (legacy global) and torch's CPU generator; restore all three on exit."""
    with _RNG_LOCK, torch.random.fork_rng(devices=[]):  # devices=[]: leave any CUDA state alone
        py_state, np_state = random.getstate(), np.random.get_state()
        try:
            random.seed(seed64)
            np.random.seed(seed64 >> 32)  # legacy seeding takes 32 bits
            torch.default_generator.manual_seed(seed64)  # not torch.manual_seed: that also seeds CUDA
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


# Kernels (basicsr's RealESRGANDataset.__getitem__)


def _sinc(omega_c: float, kernel_size: int) -> np.ndarray:
    # basicsr divides 0/0 at the centre and then overwrites it; it silences numpy with np.seterr at
    # import, but that setting is per thread, so say it again for callers in worker threads.
    with np.errstate(divide="ignore", invalid="ignore"):
        return circular_lowpass_kernel(omega_c, kernel_size, pad_to=False)


def _of_order(c: DegradationConfig, order: int, *names: str) -> list[Any]:
    """The order-1 settings ``names``, or their order-2 twins (SeeSR's names end in 2)."""
    return [getattr(c, name if order == 1 else f"{name}2") for name in names]


def _blur_kernel(c: DegradationConfig, order: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The order-1 or order-2 blur kernel, (k, k) float32, drawn like RealESRGANDataset."""
    names = ("sinc_prob", "kernel_list", "kernel_prob", "blur_sigma", "betag_range", "betap_range")
    sinc_prob, kernel_list, kernel_prob, sigma, betag, betap = _of_order(c, order, *names)
    kernel_size = random.choice(list(c.kernel_sizes))
    if np.random.uniform() < sinc_prob:
        # Real-ESRGAN's cut-off range for sizes 7..21: small kernels cannot hold a very low cut-off
        omega_c = np.random.uniform(np.pi / 3, np.pi) if kernel_size < 13 else np.random.uniform(np.pi / 5, np.pi)
        kernel = _sinc(omega_c, kernel_size)
        info = {"type": "sinc", "size": kernel_size, "omega_c": float(omega_c)}
    else:
        # Draw the type here (same law as random_mixed_kernels) so the manifest can record it; basicsr
        # then draws sigma/angle/beta for that single type.
        kernel_type = random.choices(list(kernel_list), list(kernel_prob))[0]
        kernel = random_mixed_kernels(
            [kernel_type], [1.0], kernel_size, sigma, sigma, [-math.pi, math.pi], betag, betap, noise_range=None
        )
        info = {"type": kernel_type, "size": kernel_size}
    # The dataset zero-pads to 21x21; filtering with the unpadded kernel is the same sum, 1-9x cheaper.
    return kernel.astype(np.float32), info  # (k, k), float32 like the dataset's FloatTensor


def _final_sinc_kernel(config: DegradationConfig) -> tuple[np.ndarray | None, dict[str, Any] | None]:
    if np.random.uniform() < config.final_sinc_prob:
        kernel_size = random.choice(list(config.kernel_sizes))
        omega_c = np.random.uniform(np.pi / 3, np.pi)
        kernel = _sinc(omega_c, kernel_size).astype(np.float32)
        return kernel, {"size": kernel_size, "omega_c": float(omega_c)}
    return None, None  # Real-ESRGAN filters with a unit pulse here: the identity, so skip it


# Degradation steps (Real-ESRGAN feed_data, one image)


def filter2d(x: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
    """basicsr's ``filter2D`` (reflect-101 padding, correlation) of (1, C, H, W), by OpenCV: 5-25x faster on CPU."""
    hwc = x[0].permute(1, 2, 0).contiguous().numpy()  # (H, W, C)
    out = cv2.filter2D(hwc, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(out.reshape(hwc.shape)).permute(2, 0, 1)[None].contiguous()


@lru_cache(maxsize=1)
def _jpeger() -> DiffJPEG:
    return DiffJPEG(differentiable=False).eval()  # stateless buffers: safe to share


def _random_resize(
    x: torch.Tensor, probs: Sequence[float], scale_range: Sequence[float], size_at: tuple[float, float] | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Up/down/keep resize; order 2 passes ``size_at`` (h, w) = original / sf, which the scale multiplies."""
    updown = random.choices(["up", "down", "keep"], list(probs))[0]
    scale = 1.0
    if updown == "up":
        scale = np.random.uniform(1, scale_range[1])
    elif updown == "down":
        scale = np.random.uniform(scale_range[0], 1)
    mode = random.choice(RESIZE_MODES)
    if size_at is None:
        x = F.interpolate(x, scale_factor=float(scale), mode=mode)
    else:
        x = F.interpolate(x, size=(int(size_at[0] * scale), int(size_at[1] * scale)), mode=mode)
    return x, {"type": updown, "scale": float(scale), "mode": mode}


def _add_noise(x: torch.Tensor, c: DegradationConfig, order: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """random_add_{gaussian,poisson}_noise_pt(clip=True, rounds=False), keeping the draws for the manifest."""
    names = ("gaussian_noise_prob", "gray_noise_prob", "noise_range", "poisson_scale_range")
    gaussian_prob, gray_prob, sigma_range, poisson_range = _of_order(c, order, *names)
    gaussian = np.random.uniform() < gaussian_prob
    lo, hi = sigma_range if gaussian else poisson_range
    strength = float(torch.rand(1) * (hi - lo) + lo)  # same draws as basicsr's random_generate_*_pt
    gray = bool(torch.rand(1) < gray_prob)
    add = add_gaussian_noise_pt if gaussian else add_poisson_noise_pt  # Gaussian sigma is in 0..255 units
    x = add(x, x.new_tensor([strength]), clip=True, rounds=False, gray_noise=x.new_tensor([float(gray)]))
    return x, {"type": "gaussian" if gaussian else "poisson", "sigma" if gaussian else "scale": strength, "gray": gray}


def _jpeg(x: torch.Tensor, quality_range: Sequence[float]) -> tuple[torch.Tensor, float]:
    quality = float(np.random.uniform(*quality_range))
    # clamp first, or DiffJPEG gives "unpleasant artifacts" (Real-ESRGAN); DiffJPEG returns a slice
    # of its padded output: make it contiguous (basicsr's filter2D .view()s its input and fails on it).
    x = _jpeger()(torch.clamp(x, 0, 1), quality=x.new_tensor([quality]))
    return x.contiguous(), quality


def _resize_sinc(x: torch.Tensor, size: tuple[int, int], sinc: np.ndarray | None) -> tuple[torch.Tensor, str]:
    mode = random.choice(RESIZE_MODES)
    x = F.interpolate(x, size=size, mode=mode)
    return (filter2d(x, sinc) if sinc is not None else x), mode


def _final_step(
    x: torch.Tensor, lq_size: tuple[int, int], sinc: np.ndarray | None, quality_range: Sequence[float]
) -> tuple[torch.Tensor, str, str, float]:
    """[resize to the LQ size + sinc] and JPEG in a random order (Real-ESRGAN: other orders give twisted lines)."""
    if np.random.uniform() < 0.5:
        x, mode = _resize_sinc(x, lq_size, sinc)
        x, quality = _jpeg(x, quality_range)
        return x, "resize_sinc_then_jpeg", mode, quality
    x, quality = _jpeg(x, quality_range)
    x, mode = _resize_sinc(x, lq_size, sinc)
    return x, "jpeg_then_resize_sinc", mode, quality


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) float in [0, 1] -> (H, W, 3) uint8, rounding like cv2.imwrite / Real-ESRGAN."""
    return torch.clamp((x[0] * 255.0).round(), 0, 255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _sharpened_crop(image: np.ndarray, box: tuple[int, int, int, int], hflip: bool, usm: bool) -> torch.Tensor:
    """The (left, top, width, height) crop of (H, W, 3) uint8, flipped and USM-sharpened: (1, 3, h, w) in [0, 1]."""
    left, top, w, h = box
    crop = image[top : top + h, left : left + w]  # (h, w, 3)
    if hflip:
        crop = crop[:, ::-1]
    gt = np.ascontiguousarray(crop, dtype=np.float32) / 255.0  # (h, w, 3) in [0, 1]
    if usm:
        # basicsr's numpy USM (OpenCV separable blur) = USMSharp's 51x51 conv to ~1e-6, ~100x faster
        gt = usm_sharp(gt)
    gt = np.ascontiguousarray(gt, dtype=np.float32)
    return torch.from_numpy(gt).permute(2, 0, 1)[None]


@torch.no_grad()
def degrade_pair(
    image: np.ndarray, image_id: int | str, seed: int, config: DegradationConfig
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Crop, sharpen and degrade one image: (hq (h, w, 3) uint8, lq (h/scale, w/scale, 3) uint8, info), hq the
    USM-sharpened crop (SeeSR's saved GT) unless ``config.use_usm`` is False, info every random choice."""
    image = check_rgb_uint8(image, "for a PIL image pass np.asarray(img.convert('RGB'))")
    height, width = image.shape[:2]
    seed64 = pair_seed(image_id, seed)
    rng = random.Random(seed64)  # crop and flip: a private generator, independent of basicsr's draws
    left, top, w, h = choose_crop(width, height, config.crop_sizes, rng, config.crop_position)
    hflip = config.use_hflip and rng.random() < 0.5
    # From here a straight-line recipe: Real-ESRGAN's RealESRGANModel.feed_data step by step, one image.
    with _seeded_global_rngs(seed64):
        gt_t = _sharpened_crop(image, (left, top, w, h), hflip, config.use_usm)  # (1, 3, h, w) in [0, 1]

        kernel1, k1_info = _blur_kernel(config, order=1)
        kernel2, k2_info = _blur_kernel(config, order=2)
        sinc, sinc_info = _final_sinc_kernel(config)

        # ---- first degradation: blur -> resize -> noise -> JPEG ----
        out = filter2d(gt_t, kernel1)
        out, resize1 = _random_resize(out, config.resize_prob, config.resize_range, None)
        out, noise1 = _add_noise(out, config, order=1)
        out, jpeg1 = _jpeg(out, config.jpeg_range)

        # ---- second degradation: blur? -> resize (relative to the LQ size) -> noise ----
        if blur2 := bool(np.random.uniform() < config.second_blur_prob):
            out = filter2d(out, kernel2)
        out, resize2 = _random_resize(
            out, config.resize_prob2, config.resize_range2, (h / config.scale, w / config.scale)
        )
        out, noise2 = _add_noise(out, config, order=2)

        out, order, mode3, jpeg2 = _final_step(out, (h // config.scale, w // config.scale), sinc, config.jpeg_range2)

    hq, lq = _to_uint8(gt_t), _to_uint8(out)
    info = {
        "image_id": image_id,
        "seed": int(seed),
        "crop": [left, top, w, h],  # (left, top, width, height) in the source image
        "hflip": hflip,
        "usm": config.use_usm,
        "hq_size": [w, h],
        "lq_size": [lq.shape[1], lq.shape[0]],
        "kernel1": k1_info,
        "resize1": resize1,
        "noise1": noise1,
        "jpeg1": jpeg1,
        "blur2": blur2,
        "kernel2": k2_info if blur2 else None,
        "resize2": resize2,
        "noise2": noise2,
        "final_order": order,
        "final_resize_mode": mode3,
        "final_sinc": sinc_info,
        "jpeg2": jpeg2,
    }
    return hq, lq, info
