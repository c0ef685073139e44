"""The settings of FluxGen's "degrade" step (``degrade.config``), applied by :mod:`fluxir.fluxgen.degrade`.
Sizes are (width, height), like PIL and the paper's "1024x768" generation resolution."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fluxir.parameters.config import Config, is_int, is_number

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
# Latents are /8 of the image and Flux packs 2x2 latent patches: image sides must be multiples of 16.
SIDE_MULTIPLE = 16
PREFIX = "degrade.config."  # the parameters group, named in every message

PROBABILITIES = ("sinc_prob", "sinc_prob2", "final_sinc_prob", "second_blur_prob")
PROBABILITIES += ("gaussian_noise_prob", "gray_noise_prob", "gaussian_noise_prob2", "gray_noise_prob2")
RANGES = ("blur_sigma", "betag_range", "betap_range", "blur_sigma2", "betag_range2", "betap_range2")
RANGES += ("resize_range", "noise_range", "poisson_scale_range", "jpeg_range")
RANGES += ("resize_range2", "noise_range2", "poisson_scale_range2", "jpeg_range2")


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _is_range(value: Any) -> bool:
    return _is_list(value) and len(value) == 2 and all(is_number(v) for v in value) and 0 < value[0] <= value[1]


def _is_distribution(value: Any, n: int) -> bool:
    return (
        _is_list(value)
        and len(value) == n
        and all(is_number(p) and p >= 0 for p in value)
        and math.isclose(sum(value), 1.0, abs_tol=1e-6)
    )


@dataclass(frozen=True)
class DegradationConfig(Config):
    """SeeSR's ``utils_data/make_paired_data.py`` settings under SeeSR's names plus FluxGen's crops (values in
    conf/base/parameters_fluxgen.yml). Left out on purpose: SeeSR's ``blur_kernel_size`` 21 / ``blur_kernel_size2``
    11 (basicsr's dataset ignores them and hard-codes kernel sizes 7..21, here ``kernel_sizes``),
    ``no_degradation_prob`` and ``gt_size`` (set but never used by its degradation function; our crop comes from
    ``crop_sizes``)."""

    scale: int
    crop_sizes: tuple[tuple[int, int], ...]  # (width, height)
    crop_position: str  # "center" (paper Sec. 4.1) or "random"
    use_hflip: bool
    use_usm: bool
    # kernels, first order
    kernel_sizes: tuple[int, ...]
    kernel_list: tuple[str, ...]
    kernel_prob: tuple[float, ...]
    sinc_prob: float
    blur_sigma: tuple[float, float]
    betag_range: tuple[float, float]
    betap_range: tuple[float, float]
    # kernels, second order
    kernel_list2: tuple[str, ...]
    kernel_prob2: tuple[float, ...]
    sinc_prob2: float
    blur_sigma2: tuple[float, float]
    betag_range2: tuple[float, float]
    betap_range2: tuple[float, float]
    final_sinc_prob: float
    # first degradation process
    resize_prob: tuple[float, float, float]  # up, down, keep
    resize_range: tuple[float, float]
    gaussian_noise_prob: float
    noise_range: tuple[float, float]
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float
    jpeg_range: tuple[float, float]
    # second degradation process
    second_blur_prob: float
    resize_prob2: tuple[float, float, float]  # up, down, keep
    resize_range2: tuple[float, float]
    gaussian_noise_prob2: float
    noise_range2: tuple[float, float]
    poisson_scale_range2: tuple[float, float]
    gray_noise_prob2: float
    jpeg_range2: tuple[float, float]

    PREFIX = PREFIX

    def __post_init__(self) -> None:
        # YAML gives lists; store tuples so the frozen config is hashable and safe to share.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, _to_tuple(value))
        super().__post_init__()
        object.__setattr__(self, "crop_sizes", tuple(validate_crop_sizes(self.crop_sizes, self.scale)))

    def problems(self) -> list[str]:
        found: list[str] = []

        def check(name: str, ok: bool, must: str, note: str = "") -> bool:
            if not ok:
                found.append(f"{PREFIX}{name} must be {must}, got {getattr(self, name)!r}{note}")
            return ok

        check("scale", is_int(self.scale, 1), "a positive integer")
        check("crop_position", self.crop_position in ("center", "random"), "'center' or 'random'")
        for name in PROBABILITIES:
            check(name, is_number(p := getattr(self, name)) and 0 <= p <= 1, "a probability in [0, 1]")
        sizes = self.kernel_sizes
        odd = _is_list(sizes) and bool(sizes) and all(is_int(k) and k % 2 and 3 <= k <= 21 for k in sizes)
        check("kernel_sizes", odd, "odd ints in [3, 21]")
        for kernels, probs in (("kernel_list", "kernel_prob"), ("kernel_list2", "kernel_prob2")):
            names = getattr(self, kernels)
            if check(kernels, _is_list(names) and all(k in KERNEL_TYPES for k in names), f"a list of {KERNEL_TYPES}"):
                n = len(names)
                check(probs, _is_distribution(getattr(self, probs), n), f"{n} non-negative probabilities summing to 1")
        for name in ("resize_prob", "resize_prob2"):
            ok = _is_distribution(getattr(self, name), 3)
            check(name, ok, "3 non-negative probabilities summing to 1", " (up, down, keep)")
        for name in RANGES:
            low_high = getattr(self, name)
            if not check(name, _is_range(low_high), "[low, high] with 0 < low <= high"):
                continue
            low, high = low_high
            if name.startswith("blur_sigma"):
                check(name, low < high, "[low, high] with low < high (basicsr requires it)")
            elif name.startswith("jpeg_range"):
                check(name, high <= 100, "a JPEG quality range within (0, 100]")
            elif name.startswith("resize_range"):  # Real-ESRGAN draws "down" from [low, 1] and "up" from [1, high]
                check(name, low <= 1 <= high, "[low, high] with low <= 1 <= high")
        if is_int(self.scale, 1):
            try:
                validate_crop_sizes(self.crop_sizes, self.scale)
            except ValueError as err:
                found.append(f"{PREFIX}crop_sizes: {err}")
        return found

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-friendly dict (lists instead of tuples) that ``from_params`` reads back."""
        return {f.name: _to_list(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _to_tuple(value: Any) -> Any:
    return tuple(_to_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _to_list(value: Any) -> Any:
    return [_to_list(v) for v in value] if isinstance(value, (list, tuple)) else value


def validate_crop_sizes(crop_sizes: Sequence[Sequence[int]], scale: int) -> list[tuple[int, int]]:
    """Check (width, height) crop sizes: sides must be multiples of 16 (VAE /8, 2x2 packing) and ``scale``."""
    multiple = math.lcm(SIDE_MULTIPLE, scale)
    if isinstance(crop_sizes, (str, bytes)) or not isinstance(crop_sizes, Sequence) or len(crop_sizes) == 0:
        raise ValueError(f"crop_sizes must be a non-empty list of (width, height) pairs, got {crop_sizes!r}")
    out: list[tuple[int, int]] = []
    for size in crop_sizes:
        ok_shape = isinstance(size, Sequence) and not isinstance(size, str) and len(size) == 2
        if not ok_shape or not all(is_int(s) for s in size):
            raise ValueError(f"crop size {size!r} must be a (width, height) pair of ints")
        w, h = int(size[0]), int(size[1])
        if w % multiple or h % multiple or w <= 0 or h <= 0:
            nearest = tuple(max(multiple, multiple * round(s / multiple)) for s in (w, h))
            raise ValueError(
                f"crop size (width, height)={(w, h)} must have both sides positive multiples of {multiple} "
                f"(16 for the Flux latent grid, {scale} for the LQ scale); nearest valid size: {nearest}"
            )
        out.append((w, h))
    return out
